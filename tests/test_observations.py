"""The write-behind of observations (rendezvous/observations.py) against a store that fails:
nothing observed is dropped with a failed write."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import AsyncIterator

import pytest

from meshpeer.rendezvous.model import Peer
from meshpeer.rendezvous.observations import Observations
from meshpeer.rendezvous.peerindex import PeerIndex
from meshpeer.rendezvous.storage import Store, StoreFailure

KEY = b"k" * 32
TIMESTAMP = bytes.fromhex("400000006553f1000000000a")


class FlakyStore:
    """Fails its first `failures` write transactions (rolled back: nothing kept), then keeps
    what each write_observations call was given."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.written: list[tuple[list[Peer], list[Peer]]] = []

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[FlakyStore]:
        attempt: list[tuple[list[Peer], list[Peer]]] = []
        self._attempt = attempt
        yield self
        if self.failures:
            self.failures -= 1
            raise StoreFailure("lost the PostgreSQL registry: TimeoutError")
        self.written.extend(attempt)

    async def write_observations(self, peers: list[Peer], moved: list[Peer]) -> None:
        self._attempt.append((peers, moved))

    async def set_meta(self, key: str, value: str) -> None:
        pass


def test_a_failed_write_leaves_its_observations_for_the_next() -> None:
    """A failed flush used to drop its batch: a moved endpoint never reached the store (nor,
    on PostgreSQL, the other instances) until the peer moved again."""
    index = PeerIndex()
    index.remember(Peer(KEY, "phone", ipaddress.ip_address("10.9.0.2")), None)
    store = FlakyStore(failures=1)
    observed = Observations(index, _as_store(store), stored_zone_serial=0)
    observed.handshake(KEY, TIMESTAMP, 1000.0)
    observed.endpoint(KEY, ("198.51.100.7", 40001), 1000.5)

    async def flush_twice() -> None:
        with pytest.raises(StoreFailure):
            await observed.flush()
        await observed.flush()

    asyncio.run(flush_twice())
    [(peers, moved)] = store.written
    assert [peer.last_handshake for peer in peers] == [1000.0]
    assert [peer.endpoint for peer in moved] == [("198.51.100.7", 40001)]


def _as_store(fake: FlakyStore) -> Store:
    return fake  # type: ignore[return-value]  # the part of Store that flush() uses
