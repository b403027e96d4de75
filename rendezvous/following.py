"""Following the writes of other processes: the admin CLI writing the same SQLite file, or the
other rendezvous instances sharing one PostgreSQL database.

Every write that changes a peer also numbers the change in the store (storage.py), and the
engines commit those numbers in order, so a follower needs only the last number it applied:
`catch_up` reads every change after it and reloads those peers. How soon it looks is the
engine's business (`Store.follow_changes`): SQLite is polled, PostgreSQL says so itself.
Whatever wakes it, it reads from its last number, so a lost wake-up delays a change and never
loses it; the slow FOLLOW_SAFETY_POLL_S poll is the bound on that delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from meshpeer.common.events import set_within

from .peerindex import PeerIndex
from .storage import Reader, Store, StoreFailure
from .timers import FOLLOW_SAFETY_POLL_S, TIDY_EVERY_S

logger = logging.getLogger("meshpeer.rendezvous.registry")


class ChangeFollower:
    def __init__(self, store: Store, index: PeerIndex, forget: Callable[[bytes], None]) -> None:
        self._store = store
        self._index = index
        self._forget = forget  # a peer another process removed: everything held about it goes
        self._seen_change = 0
        self._commit_marker = -1
        self._nudged = asyncio.Event()

    async def start_from_store(self) -> None:
        """The peers were just loaded: what is committed now is what we have seen."""
        self._seen_change = await self._store.latest_change()
        self._commit_marker = await self._store.commit_marker()

    async def run(self) -> None:
        """Serving only, until cancelled: apply other processes' changes as they commit."""
        feed = asyncio.create_task(self._store.follow_changes(self._nudged.set), name="feed")
        try:
            while True:
                await set_within(self._nudged, FOLLOW_SAFETY_POLL_S)
                self._nudged.clear()
                try:
                    await self.sync()
                except StoreFailure as error:
                    logger.warning("could not read the registry (%s); retrying", error)
        finally:
            feed.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feed

    async def sync(self) -> None:
        """Apply what other processes committed since we last looked."""
        marker = await self._store.commit_marker()
        if marker == self._commit_marker:
            return
        self._commit_marker = marker
        async with self._store.exclusive() as reader:
            await self.catch_up(reader)

    async def catch_up(self, reader: Reader) -> None:
        """Reload every peer changed after the last change we applied (inside a transaction,
        before a write that must see the others' first)."""
        changed: dict[bytes, None] = {}
        for seq, key in await reader.changes_since(self._seen_change):
            self._seen_change = max(self._seen_change, seq)
            changed[key] = None
        for key in changed:
            await self._reload(reader, key)

    async def _reload(self, reader: Reader, public_key: bytes) -> None:
        stored = await reader.stored_peer(public_key)
        if stored is None:
            self._forget(public_key)
            return
        merged = stored.peer.observed_as(self._index.get(public_key))
        self._index.remember(merged, stored.credential_hash)


async def tidy_forever(tidy: Callable[[], Awaitable[int]]) -> None:
    """Serving only, until cancelled: keep the change log and the instance list bounded
    (Store.tidy). Every instance does it; one doing it after another deletes nothing."""
    while True:
        await asyncio.sleep(TIDY_EVERY_S)
        try:
            deleted = await tidy()
        except StoreFailure as error:
            logger.warning("could not tidy the registry (%s); trying again later", error)
        else:
            logger.debug("tidied the registry: %d rows", deleted)
