"""The agent's HTTP client (peer/http.py) against hostile TLS servers on loopback: whatever a
server sends, the agent gets an answer or RequestFailed/TimeoutError, bounded in size and time."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from meshpeer.common import pinning
from meshpeer.peer import client, http
from meshpeer.rendezvous import tls

Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def server(tmp_path: Path, serve: Serve) -> AsyncIterator[tuple[str, str]]:
    """A TLS server on 127.0.0.1 (port 0) that answers with `serve`; yields its URL and pin."""
    files = tls.ensure_self_signed(tmp_path, "127.0.0.1")
    listening = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=tls.server_context(files))
    port = listening.sockets[0].getsockname()[1]
    try:
        yield f"https://127.0.0.1:{port}/v1/watch?timeout=1", tls.read_pin(files)
    finally:
        listening.close()


def elsewhere(tmp_path: Path) -> Path:
    """A second data folder: another certificate, another key."""
    other = tmp_path / "other"
    other.mkdir(exist_ok=True)
    return other


def answering(raw: bytes) -> Serve:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(raw)
        await writer.drain()
        writer.close()

    return serve


def ask(url: str, pin: str, timeout_s: float = 5.0) -> http.Answer:
    return asyncio.run(
        http.request(
            "GET",
            url,
            pinning.PinnedCertificates(pin),
            connect_timeout_s=timeout_s,
            timeout_s=timeout_s,
        )
    )


def run(tmp_path: Path, serve: Serve, timeout_s: float = 5.0) -> http.Answer:
    async def scenario() -> http.Answer:
        async with server(tmp_path, serve) as (url, pin):
            return await http.request(
                "GET",
                url,
                pinning.PinnedCertificates(pin),
                connect_timeout_s=timeout_s,
                timeout_s=timeout_s,
            )

    return asyncio.run(scenario())


@pytest.mark.parametrize(
    "raw",
    [
        b'HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{"a": 1 }',
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b'4\r\n{"a"\r\n5\r\n: 1 }\r\n0\r\n\r\n',
        b'HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n{"a": 1}',
        b'HTTP/1.0 200 OK\r\n\r\n{"a": 1}',  # the body ends when the server closes
    ],
)
def test_each_framing_of_an_answer_reads_the_same(tmp_path: Path, raw: bytes) -> None:
    assert run(tmp_path, answering(raw)) == http.Answer(200, {"a": 1})


@pytest.mark.parametrize("body", [b"[1, 2]", b"not json", b"\xff\xfe", b""])
def test_a_body_that_is_not_a_json_object_reads_as_empty(tmp_path: Path, body: bytes) -> None:
    raw = b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    assert run(tmp_path, answering(raw)) == http.Answer(502, {})


@pytest.mark.parametrize(
    "raw",
    [
        b"SSH-2.0-OpenSSH_9.2\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{}",  # closed before the body's end
        b"HTTP/1.1 200 OK\r\nX-" + b"a" * 70000 + b": 1\r\n\r\n",  # a header over h11's bound
        b"",
    ],
)
def test_a_broken_answer_is_request_failed(tmp_path: Path, raw: bytes) -> None:
    with pytest.raises(http.RequestFailed):
        run(tmp_path, answering(raw))


def test_an_endless_answer_stops_at_the_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http, "MAX_ANSWER_BYTES", 1 << 20)

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(10_000):  # 160 MiB if nobody stops it
            writer.write(b"4000\r\n" + b" " * 0x4000 + b"\r\n")
            await writer.drain()

    with pytest.raises(http.RequestFailed, match="over 1048576 bytes"):
        run(tmp_path, endless)


def test_a_server_that_never_answers_costs_the_timeout_and_no_more(tmp_path: Path) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    started = time.monotonic()
    with pytest.raises(TimeoutError):
        run(tmp_path, silent, timeout_s=0.5)
    assert time.monotonic() - started < 3


def test_another_key_is_refused_before_the_request_is_sent(tmp_path: Path) -> None:
    heard: list[bytes] = []

    async def listening(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heard.append(await reader.read(100))

    async def scenario() -> None:
        async with server(tmp_path, listening) as (url, _):
            other_pin = tls.read_pin(tls.ensure_self_signed(elsewhere(tmp_path), "127.0.0.1"))
            with pytest.raises(http.WrongKey):
                await http.request(
                    "POST",
                    url,
                    pinning.PinnedCertificates(other_pin),
                    body={"token": "secret"},
                    connect_timeout_s=5,
                    timeout_s=5,
                )
            await asyncio.sleep(0.2)

    asyncio.run(scenario())
    assert heard in ([], [b""])  # the TLS handshake ended, and nothing came after it


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:1/", "https://user:pw@127.0.0.1/", "https://127.0.0.1:99999/", "x"]
)
def test_a_url_the_agent_does_not_send_to_is_refused_at_once(url: str) -> None:
    with pytest.raises(http.RequestFailed):
        ask(url, "sha256:" + "0" * 64)


def test_a_certificate_seen_to_hold_the_key_is_not_parsed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = tls.ensure_self_signed(tmp_path, "127.0.0.1")
    der = ssl.PEM_cert_to_DER_cert(files.cert.read_text())
    checked = pinning.PinnedCertificates(tls.read_pin(files))
    assert asyncio.run(checked.holds_pinned_key(der))
    assert checked.remembered() == (pinning.certificate_digest(der),)

    def unparsable(_: bytes) -> str:
        raise AssertionError("parsed again")

    monkeypatch.setattr(pinning, "pin_of_certificate", unparsable)
    assert asyncio.run(checked.holds_pinned_key(der))
    again = pinning.PinnedCertificates(checked.pin, checked.remembered())
    assert asyncio.run(again.holds_pinned_key(der))


def test_a_certificate_without_the_key_is_not_remembered(tmp_path: Path) -> None:
    other = tls.ensure_self_signed(elsewhere(tmp_path), "127.0.0.1")
    checked = pinning.PinnedCertificates(tls.read_pin(tls.ensure_self_signed(tmp_path, "h")))
    other_der = ssl.PEM_cert_to_DER_cert(other.cert.read_text())
    assert not asyncio.run(checked.holds_pinned_key(other_der))
    assert not asyncio.run(checked.holds_pinned_key(b"\x30\x03\x02\x01\x00"))  # not one
    assert checked.remembered() == ()


def test_the_agent_keeps_one_check_per_pin_and_a_few_pins() -> None:
    pins = [f"sha256:{n:064x}" for n in range(client.MAX_PINS + 2)]
    first = client.pinned_certificates(pins[0])
    assert client.pinned_certificates(pins[0]) is first
    for pin in pins[1:]:
        client.pinned_certificates(pin)
    assert len(client._PINNED) == client.MAX_PINS
