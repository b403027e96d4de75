"""The agent's HTTP/1.1 client: h11 (RFC 9112 framing, sans-I/O) over one asyncio TLS stream.

The agent asks one thing at a time (a join, the watch's long poll, two small PUTs), one request
per connection, with no redirects, cookies, proxies or compression. aiohttp's client, which the
rendezvous's server keeps, held about 10 MiB of every agent's 40 (issue 17: importing it also
loads the system's CA store twice), for none of that. h11 parses the answer; this module only
moves bytes, bounds them, and checks the TLS key against the pin before a byte is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import h11

from meshpeer.common.pinning import PinnedCertificates

# The largest answer read. A first watch lists every peer, about 300 bytes each: room for
# 100,000. It is not all a server can make an agent hold: JSON of tiny objects (`[{},{},...]`)
# parses into some 30 times its size. Only the pinned rendezvous gets this far, though.
MAX_ANSWER_BYTES = 32 * 1024 * 1024
READ_BYTES = 65536
USER_AGENT = "meshpeer"


class RequestFailed(Exception):
    """No usable answer: the reason in a few words, for a log line."""


class WrongKey(RequestFailed):
    """The server's TLS key is not the pinned one; nothing was sent."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: dict[str, Any]  # {} when the body is not a JSON object


# Options for the connected socket (the agent's TCP keepalives): it takes what asyncio gives.
SocketTuning = Callable[[Any], None]
# RFC 8305 §5's recommended Connection Attempt Delay, as aiohttp's client used.
NEXT_ADDRESS_AFTER_S = 0.25


def _untuned(_: Any) -> None:
    pass


async def request(
    method: str,
    url: str,
    pinned: PinnedCertificates | None,
    *,
    body: dict[str, Any] | None = None,
    credential: str | None = None,
    connect_timeout_s: float,
    timeout_s: float,
    tune_socket: SocketTuning = _untuned,
) -> Answer:
    """One request, its whole answer within timeout_s (a connection within connect_timeout_s).
    `pinned` None: the server must show a certificate the system's CAs sign for its name."""
    async with asyncio.timeout(timeout_s):
        target = _Target.of(url)
        reader, writer = await _connect(target, pinned, connect_timeout_s, tune_socket)
        try:
            return await _exchange(reader, writer, target, method, body, credential)
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
                async with asyncio.timeout(1.0):  # a peer that never closes costs no more
                    await writer.wait_closed()


@dataclass(frozen=True, slots=True)
class _Target:
    host: str
    port: int
    path: str  # with the query

    @classmethod
    def of(cls, url: str) -> _Target:
        try:
            parts = urlsplit(url)
        except ValueError:  # "https://[::1", say
            raise RequestFailed(f"not a URL: {url[:200]!r}") from None
        if parts.scheme != "https" or not parts.hostname or parts.username or parts.password:
            raise RequestFailed(f"not an https URL this agent sends to: {url[:200]!r}")
        try:
            port = parts.port or 443
        except ValueError:
            raise RequestFailed(f"not a port: {url[:200]!r}") from None
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return cls(parts.hostname, port, path)

    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == 443 else f"{host}:{self.port}"


async def _connect(
    target: _Target,
    pinned: PinnedCertificates | None,
    timeout_s: float,
    tune_socket: SocketTuning,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    async with asyncio.timeout(timeout_s):
        try:
            reader, writer = await asyncio.open_connection(
                target.host,
                target.port,
                ssl=_context(pinned is not None),
                server_hostname=target.host,
                ssl_handshake_timeout=timeout_s,
                # A name with several addresses (instances, IPv6 beside IPv4): the next is tried
                # this long after the one before, not after its whole timeout (RFC 8305 §5).
                happy_eyeballs_delay=NEXT_ADDRESS_AFTER_S,
                interleave=1,
            )
        except UnicodeError:  # the IDNA codec's: a label over 63 characters, say
            raise RequestFailed(f"not a host name: {target.host[:200]!r}") from None
    tune_socket(writer.get_extra_info("socket"))
    if pinned is not None:
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
        if not der or not await pinned.holds_pinned_key(der):
            writer.close()
            raise WrongKey("its TLS key is not the pinned one")
    return reader, writer


@functools.cache  # one of each per process: the CA store is read once, not per long poll
def _context(pinned: bool) -> ssl.SSLContext:
    """The pin is the whole check (no CA signs a rendezvous's own certificate); without one,
    the system's CAs and the host name, as a TLS proxy in front of the API presents."""
    if not pinned:
        context = ssl.create_default_context()
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    return context


async def _exchange(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    target: _Target,
    method: str,
    body: dict[str, Any] | None,
    credential: str | None,
) -> Answer:
    connection = h11.Connection(h11.CLIENT)
    payload = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
    headers = [("Host", target.host_header()), ("User-Agent", USER_AGENT), ("Connection", "close")]
    headers.append(("Content-Length", str(len(payload))))
    if body is not None:
        headers.append(("Content-Type", "application/json"))
    if credential:
        headers.append(("Authorization", f"Bearer {credential}"))
    try:
        head = connection.send(h11.Request(method=method, target=target.path, headers=headers))
    except (h11.LocalProtocolError, UnicodeEncodeError) as error:  # a space, a line break
        raise RequestFailed(f"not a request HTTP/1.1 can carry: {error}") from None
    writer.write(head)
    writer.write(connection.send(h11.Data(data=payload)) + connection.send(h11.EndOfMessage()))
    await writer.drain()
    return await _answer(connection, reader)


async def _answer(connection: h11.Connection, reader: asyncio.StreamReader) -> Answer:
    # One buffer, not a list of h11's chunks: a 1-byte chunk is a ~60-byte object of its own.
    status, body = 0, bytearray()
    while True:
        try:
            event = connection.next_event()
        except h11.RemoteProtocolError as error:
            raise RequestFailed(f"the answer is not HTTP/1.1: {error}") from None
        if event is h11.NEED_DATA:
            data = await reader.read(READ_BYTES)
            if not data and status == 0:
                raise RequestFailed("the connection was closed")
            connection.receive_data(data)  # b"": the server closed, and h11 says if too soon
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            if len(body) + len(event.data) > MAX_ANSWER_BYTES:
                raise RequestFailed(f"the answer is over {MAX_ANSWER_BYTES} bytes")
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return Answer(status, _json_object(body))
        elif isinstance(event, h11.ConnectionClosed):
            raise RequestFailed("the connection was closed")


def _json_object(raw: bytes | bytearray) -> dict[str, Any]:
    try:
        decoded = json.loads(raw)
    except (ValueError, RecursionError):  # UnicodeDecodeError included; '[' * 10**5
        return {}
    return decoded if isinstance(decoded, dict) else {}
