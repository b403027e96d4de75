"""What the handshake responder observes (endpoints, handshake times, the TAI64N replay floor),
published in memory at once and written behind, in batches: an endpoint change within
ENDPOINT_FLUSH_S, the rest within LAZY_FLUSH_S. The DNS zone's serial is kept at each flush,
so it never goes backwards, even across a restart. On a shared database each move is also a
change the other instances follow (storage.py `write_observations`): an endpoint observed by
any instance is published by all, the latest confirmed one winning; handshake times are
written behind as before and logged as no change (they arrive at keepalive rate)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import replace

from meshpeer.common.endpoints import Endpoint
from meshpeer.common.events import set_within

from .damping import EndpointDamper
from .model import Peer
from .peerindex import PeerIndex
from .storage import Store, StoreFailure
from .timers import ENDPOINT_FLUSH_S, LAZY_FLUSH_S

logger = logging.getLogger("meshpeer.rendezvous.registry")


class Observations:
    def __init__(self, index: PeerIndex, store: Store, stored_zone_serial: int) -> None:
        self._index = index
        self._store = store
        self.damper = EndpointDamper()
        self.zone_serial: Callable[[], int] | None = None  # the DNS zone's, kept at each flush
        self.stored_zone_serial = stored_zone_serial
        self._dirty: set[bytes] = set()
        self._moved: set[bytes] = set()  # of the dirty: those whose endpoint moved
        self._endpoint_moved = asyncio.Event()

    def handshake(self, public_key: bytes, timestamp: bytes, now: float) -> None:
        peer = self._index.get(public_key)
        if peer is None:
            return
        self._index.observe(replace(peer, last_handshake=now, handshake_timestamp=timestamp))
        self._dirty.add(public_key)

    def endpoint(self, public_key: bytes, source: Endpoint, now: float) -> None:
        """An authenticated keepalive came from `source`: that is the peer's NAT mapping.
        Published at once, or after the damper's hold when the peer moved a moment ago."""
        peer = self._index.get(public_key)
        if peer is not None and self.damper.observe(public_key, source, peer.endpoint, now):
            self._move(peer, source, now)

    def publish_held(self, now: float) -> None:
        for key, endpoint in self.damper.due(now):
            peer = self._index.get(key)
            if peer is not None and peer.endpoint != endpoint:
                self._move(peer, endpoint, now)

    def publish_all_held(self, now: float) -> None:
        """Closing: the newest endpoint seen of each peer, though still held."""
        for key, endpoint in self.damper.drain():
            peer = self._index.get(key)
            if peer is not None:
                self._move(peer, endpoint, now)

    def forget(self, public_key: bytes) -> None:
        self._dirty.discard(public_key)
        self._moved.discard(public_key)
        self.damper.forget(public_key)

    def _move(self, peer: Peer, endpoint: Endpoint, now: float) -> None:
        moved = replace(peer, endpoint=endpoint, endpoint_confirmed_at=now)
        self._index.observe(moved)
        self._dirty.add(peer.public_key)
        self._moved.add(peer.public_key)
        self._endpoint_moved.set()
        self._index.publish("updated", moved)

    async def flush(self) -> None:
        """Write what was observed (the replay floor survives a restart), and the serial."""
        serial = self.zone_serial() if self.zone_serial else self.stored_zone_serial
        if not self._dirty and serial == self.stored_zone_serial:
            return
        dirty, self._dirty = self._dirty, set()
        moved_keys, self._moved = self._moved, set()
        peers = [peer for key in dirty if (peer := self._index.get(key)) is not None]
        moved = [peer for peer in peers if peer.public_key in moved_keys]
        try:
            async with self._store.transaction() as db:
                await db.write_observations(peers, moved)
                if serial != self.stored_zone_serial:
                    await db.set_meta("zone_serial", str(serial))
        except BaseException:
            # Rolled back: the next flush writes them (their latest state), or a move would
            # never reach the store, nor the other instances, until the peer moved again.
            self._dirty |= dirty
            self._moved |= moved_keys
            raise
        self.stored_zone_serial = serial

    async def write_behind(self) -> None:
        """Serving only, until cancelled."""
        while True:
            if await set_within(self._endpoint_moved, LAZY_FLUSH_S):
                await asyncio.sleep(ENDPOINT_FLUSH_S)  # let a burst of moves share one commit
            self._endpoint_moved.clear()
            self.publish_held(time.time())
            try:
                await self.flush()
            except StoreFailure as error:
                logger.warning("could not write observations yet (%s); retrying", error)
