"""The agent's HTTP client (peer/http.py) against hostile TLS servers on loopback: whatever a
server sends, the agent gets an answer or RequestFailed/TimeoutError, bounded in size and time."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from meshpeer.common import pinning
from meshpeer.common.keys import encode_key
from meshpeer.peer import client, http
from meshpeer.peer.state import Membership
from meshpeer.peer.timers import DEAD_CONNECTION_S
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


def test_a_deeply_nested_json_answer_reads_as_empty(tmp_path: Path) -> None:
    """Review of the h11 client: json.loads raised RecursionError out of http.request (and
    client._request) for 100,000 '[' from the server, where any other bad body is {}."""
    body = b"[" * 100_000
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    assert run(tmp_path, answering(raw)) == http.Answer(200, {})


def test_one_byte_chunks_cost_no_more_than_the_bytes_they_carry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review of the h11 client: each h11 Data event was kept as its own bytearray (about 60
    bytes of object for a 1-byte chunk), so a server sending 1-byte chunks made the agent hold
    ~60 times what MAX_ANSWER_BYTES bounds (634 MiB within the watch's 40 s, measured)."""
    monkeypatch.setattr(http, "MAX_ANSWER_BYTES", 1 << 20)
    size = 128 * 1024

    async def one_byte_chunks(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(size // 4096):
            writer.write(b"1\r\n \r\n" * 4096)
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        writer.close()

    tracemalloc.start()
    try:
        assert run(tmp_path, one_byte_chunks, timeout_s=60) == http.Answer(200, {})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20  # the list of chunks took ~19 MiB for this 128 KiB body


def silent_address() -> tuple[tuple[str, int], list[socket.socket]]:
    """An address on loopback that never answers a SYN: a listener whose queue is full."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    address = listener.getsockname()
    held = [listener]
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(address)
        held.append(filler)
    time.sleep(0.1)
    return address, held


def test_a_name_whose_first_address_is_silent_is_reached_at_its_second(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review of the h11 client: addresses were tried one after another within one connect
    timeout, so a silent first one (a dead instance's A record, IPv6 dropped by a firewall)
    spent it all and the second was never tried. aiohttp's client (happy eyeballs, 0.25 s)
    was answered by the second address in 0.26 s."""
    silent, held = silent_address()

    async def scenario() -> tuple[http.Answer, float]:
        async with server(
            tmp_path, answering(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        ) as (
            url,
            pin,
        ):
            port = int(url.split(":")[2].split("/")[0])

            async def both(*_: object, **__: object) -> list[tuple[object, ...]]:
                stream = (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "")
                return [(*stream, silent), (*stream, ("127.0.0.1", port))]

            monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", both)
            started = time.monotonic()
            answer = await http.request(
                "GET",
                f"https://rendezvous.test:{port}/v1/watch",
                pinning.PinnedCertificates(pin),
                connect_timeout_s=3,
                timeout_s=5,
            )
            return answer, time.monotonic() - started

    try:
        answer, took = asyncio.run(scenario())
    finally:
        for sock in held:
            sock.close()
    assert answer == http.Answer(200, {}) and took < 2


def test_an_epoch_the_server_chose_goes_back_quoted(tmp_path: Path) -> None:
    """Review of the h11 client: the watch put the server's epoch in its URL as it came, and
    h11 refused the request line for a space (LocalProtocolError) or a non-ASCII character
    (UnicodeEncodeError): a traceback out of the watch loop at each try, then exit 1. aiohttp
    (yarl) quoted it."""
    heard: list[bytes] = []
    listed = b'{"epoch": "e", "revision": 2, "full": false, "peers": [], "removed": []}'

    async def watch_api(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heard.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(listed), listed))
        await writer.drain()
        writer.close()

    async def scenario() -> None:
        async with server(tmp_path, watch_api) as (url, pin):
            membership = member_of(url.split("/v1")[0], pin, "credential")
            for epoch in ("a b", "caf\u00e9", "x\r\nX-Injected: 1"):
                answer = await client.watch(membership, epoch, 1, 0.1)
                assert answer.epoch == "e"

    asyncio.run(scenario())
    assert len(heard) == 3 and all(b"\r\nX-Injected" not in request for request in heard)


def test_a_credential_that_is_not_a_header_value_is_unreachable(tmp_path: Path) -> None:
    """Review of the h11 client: a credential with a line break (from the rendezvous's sealed
    answer, or membership.json) raised h11's LocalProtocolError out of every request; the
    aiohttp client turned aiohttp's ValueError into Unreachable."""

    async def scenario() -> None:
        async with server(tmp_path, answering(b"HTTP/1.1 200 OK\r\n\r\n")) as (url, pin):
            membership = member_of(url.split("/v1")[0], pin, "secret\r\nX-Injected: 1")
            with pytest.raises(client.Unreachable):
                await client.set_lan(membership, ())

    asyncio.run(scenario())


@pytest.mark.parametrize("host", ["[::1", "a" * 64 + ".example", "b\u00fccher.test"])
def test_a_url_python_cannot_resolve_or_send_is_request_failed(
    tmp_path: Path, host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review of the h11 client: urlsplit's ValueError, the IDNA codec's UnicodeError (a label
    over 63 characters) and h11's UnicodeEncodeError (a Host header that is not ASCII) left
    http.request, which declares RequestFailed for a URL it does not send to. Such a URL comes
    from a token, which only has to start with https://."""

    async def scenario() -> None:
        async with server(tmp_path, answering(b"HTTP/1.1 200 OK\r\n\r\n")) as (url, pin):
            port = int(url.split(":")[2].split("/")[0])

            async def loopback(*_: object, **__: object) -> list[tuple[object, ...]]:
                stream = (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "")
                return [(*stream, ("127.0.0.1", port))]

            if host.endswith(".test"):  # resolved, so the request is built
                monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", loopback)
            await http.request(
                "GET",
                f"https://{host}:{port}/",
                pinning.PinnedCertificates(pin),
                connect_timeout_s=2,
                timeout_s=2,
            )

    with pytest.raises(http.RequestFailed):
        asyncio.run(scenario())


def member_of(api_url: str, pin: str, credential: str) -> Membership:
    return Membership(
        api_url=api_url,
        credential=credential,
        name="pc",
        address="100.64.0.2",
        network="100.64.0.0/16",
        zone="mesh.test",
        dns="100.64.0.1:53",
        rendezvous_key=encode_key(bytes(32)),
        rendezvous_endpoint="127.0.0.1:51820",
        rendezvous_address="100.64.0.1",
        tls_pin=pin,
    )


def test_the_agent_s_connection_carries_its_keepalive_options(tmp_path: Path) -> None:
    """The failover notices a silent host by TCP keepalives (client._probing): they must be
    on the socket the request really uses."""
    seen: list[tuple[int, int]] = []

    def probing_and_reading(sock: Any) -> None:
        client._probing(sock)
        seen.append(
            (
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
            )
        )

    async def scenario() -> http.Answer:
        ok = answering(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        async with server(tmp_path, ok) as (url, pin):
            return await http.request(
                "GET",
                url,
                pinning.PinnedCertificates(pin),
                connect_timeout_s=5,
                timeout_s=5,
                tune_socket=probing_and_reading,
            )

    assert asyncio.run(scenario()).status == 200
    assert seen == [(1, int(DEAD_CONNECTION_S * 1000))]
