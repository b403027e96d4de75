"""The WireGuard port: one UDP socket (udp.py) whose datagrams a small dispatcher routes to the
sans-I/O core each belongs to.

The handshake responder (handshake.py) takes what is its own: initiations keyed by our public
key, transport messages to its sessions, and anything malformed (it counts those). The relay
(relay.py) takes the rest: initiations keyed by another peer's key, responses, cookie replies,
and transport messages to indexes the relay learned. Transport data to the relay, nearly all of
what it forwards, takes a path of its own that builds no message, and the port is the socket's
fast lane (udp.py): that path runs on the socket's reader thread, not on the event loop.
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
        if self.takes(data):
            destination = self.destination(data, source, now)
            return [] if destination is None else [(data, destination)]
        if self._relay is not None and not self._responder.claims(data):
            return self._through(self._relay, data, source, now)
        return self._through(self._responder, data, source, now)

    # -- the fast lane (udp.FastLane), called from the socket's reader thread ------------------

    def takes(self, data: bytes) -> bool:
        """Transport data that is not for one of our sessions: the relay's. Reads only the
        responder's session table, one dictionary lookup (safe beside the loop's changes)."""
        return (
            self._relay is not None
            and data[:4] == _TRANSPORT_TYPE
            and len(data) >= wire.TRANSPORT_MIN_SIZE
            and not self._responder.claims(data)
        )

    def destination(self, data: bytes, source: Endpoint, now: float) -> Endpoint | None:
        if self._relay is None:  # takes() said there is one
            return None
        return self._relay.transport_destination(data, source, now)

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
    wgport = WireGuardPort(responder, on_event, relay)
    lane = wgport if relay is not None else None
    return DatagramEndpoint(open_socket(host, port), wgport.handle, lane=lane)
