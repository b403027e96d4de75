"""Mesh addresses for new peers: next fit over the network's host range, never one taken.

Freed addresses come back, but only after the others: a peer that still routes to a removed one
does not reach a newcomer at once. The store decides what is taken, inside the transaction that
then inserts the peer (and its UNIQUE address refuses a double), so two joins never share one.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Iterable

from meshpeer.common.endpoints import IPAddress

from . import settings as config
from .model import Conflict, Peer


class AddressAllocator:
    def __init__(self, settings: config.Settings) -> None:
        self._settings = settings
        # Peers get addresses after the rendezvous's own (the first host) and before broadcast.
        self._first = int(settings.rendezvous_address) + 1
        self._last = int(settings.network.broadcast_address) - 1
        self._next = self._first

    def resume_after(self, peers: Iterable[Peer]) -> None:
        """Continue after the highest address given (as at the last allocation before a restart)."""
        given = [int(peer.address) for peer in peers if peer.address in self._settings.network]
        self._next = max(given) + 1 if given else self._first

    async def allocate(self, taken: Callable[[IPAddress], Awaitable[bool]]) -> IPAddress:
        """The first address after the last one given, wrapping around, that is not `taken`."""
        size = self._last - self._first + 1
        start = min(max(self._next, self._first), self._last)
        for step in range(size):
            candidate = self._first + (start - self._first + step) % size
            address = ipaddress.ip_address(candidate)
            if not await taken(address):
                self._next = candidate + 1
                return address
        raise Conflict(f"the network {self._settings.network} is full; remove peers or widen it")
