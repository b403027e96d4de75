"""The WireGuard port: one UDP socket (udp.py) whose datagrams a small dispatcher routes to the
sans-I/O core each belongs to.

The handshake responder (handshake.py) takes what is its own: initiations keyed by our public
key, transport messages to its sessions, and anything malformed (it counts those). The relay
(relay.py) takes the rest: initiations keyed by another peer's key, responses, cookie replies,
and transport messages to indexes the relay learned. Transport data to the relay, nearly all of
what it forwards, takes a path of its own that builds no message.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from meshpeer.common.endpoints import Endpoint

from . import wire
from .handshake import Event, Responder
from .udp import DatagramEndpoint, open_socket

Datagrams = list[tuple[bytes, Endpoint]]
_TRANSPORT_TYPE = bytes([wire.MessageType.TRANSPORT, 0, 0, 0])


class Core(Protocol):
    """A sans-I/O core as the responder is one: bytes, source and time in; datagrams, events out."""

    def receive_datagram(self, data: bytes, source: Endpoint, now: float) -> None: ...

    def datagrams_to_send(self) -> Datagrams: ...

    def next_event(self) -> Event | None: ...


class RelayCore(Core, Protocol):
    def transport_destination(
        self, data: bytes, source: Endpoint, now: float
    ) -> Endpoint | None: ...


class WireGuardPort:
    def __init__(
        self,
        responder: Responder,
        on_event: Callable[[Event], None],
        relay: RelayCore | None = None,
    ) -> None:
        self._responder = responder
        self._on_event = on_event
        self._relay = relay

    def handle(self, data: bytes, source: Endpoint, now: float) -> Datagrams:
        relay = self._relay
        if relay is not None and not self._responder.claims(data):
            if data[:4] == _TRANSPORT_TYPE and len(data) >= wire.TRANSPORT_MIN_SIZE:
                destination = relay.transport_destination(data, source, now)
                return [] if destination is None else [(data, destination)]
            return self._through(relay, data, source, now)
        return self._through(self._responder, data, source, now)

    def _through(self, core: Core, data: bytes, source: Endpoint, now: float) -> Datagrams:
        core.receive_datagram(data, source, now)
        while (event := core.next_event()) is not None:
            self._on_event(event)
        return core.datagrams_to_send()


async def serve_handshakes(
    responder: Responder,
    host: str,
    port: int,
    on_event: Callable[[Event], None],
    relay: RelayCore | None = None,
) -> DatagramEndpoint:
    """The WireGuard port on `host:port`, answering with `responder` and forwarding what it
    does not claim through `relay`; the loop's clock."""
    return DatagramEndpoint(
        open_socket(host, port), WireGuardPort(responder, on_event, relay).handle
    )
