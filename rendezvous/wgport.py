"""The WireGuard port: one UDP socket (udp.py) whose datagrams a small dispatcher routes to the
sans-I/O core each belongs to.

The handshake responder (handshake.py) takes what is its own: initiations keyed by our public
key, transport messages to its sessions, and anything malformed (it counts those). The relay
(relay.py) takes the rest, with `add_core`: initiations keyed by another peer's key, responses,
cookie replies, and transport messages to indexes the relay learned.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from meshpeer.common.endpoints import Endpoint

from .handshake import Event, Responder
from .udp import DatagramEndpoint, open_socket

Datagrams = list[tuple[bytes, Endpoint]]
Claim = Callable[[bytes], bool]  # is this datagram for that core? (bytes only, no parsing cost)


class Core(Protocol):
    """A sans-I/O core as the responder is one: bytes, source and time in; datagrams, events out."""

    def receive_datagram(self, data: bytes, source: Endpoint, now: float) -> None: ...

    def datagrams_to_send(self) -> Datagrams: ...

    def next_event(self) -> Event | None: ...


class WireGuardPort:
    def __init__(self, responder: Responder, on_event: Callable[[Event], None]) -> None:
        self._responder = responder
        self._on_event = on_event
        self._claimed: list[tuple[Claim, Core]] = []

    def add_core(self, claim: Claim, core: Core) -> None:
        """Route the datagrams `claim` accepts to `core` instead of the responder."""
        self._claimed.append((claim, core))

    def handle(self, data: bytes, source: Endpoint, now: float) -> Datagrams:
        core = self._core_for(data)
        core.receive_datagram(data, source, now)
        while (event := core.next_event()) is not None:
            self._on_event(event)
        return core.datagrams_to_send()

    def _core_for(self, data: bytes) -> Core:
        for claim, core in self._claimed:
            if claim(data):
                return core
        return self._responder


async def serve_handshakes(
    responder: Responder,
    host: str,
    port: int,
    on_event: Callable[[Event], None],
    relay: Core | None = None,
) -> DatagramEndpoint:
    """The WireGuard port on `host:port`, answering with `responder` and forwarding what it
    does not claim through `relay`; the loop's clock."""
    port_cores = WireGuardPort(responder, on_event)
    if relay is not None:
        port_cores.add_core(lambda data: not responder.claims(data), relay)
    return DatagramEndpoint(open_socket(host, port), port_cores.handle)
