"""The watch API's log: a revision per peer change, answered as deltas to long polls.

Each change to a peer (added, updated, removed) is one revision. A watcher that names the
current epoch and a revision still in the log gets only the peers changed since; one that is
new, too far behind, or from before a restart (another epoch) gets every peer. A change to the
list of serving instances is a revision too, naming no peer: it wakes the watchers, and an
answer past it says the list changed.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

from meshpeer.common.events import set_within

from .model import Peer
from .timers import WATCH_COALESCE_S

WATCH_LOG_LENGTH = 100_000  # revisions kept for deltas; a watcher further behind gets all peers
NO_PEER = b""  # the key of a revision that changed the list of instances, not a peer


@dataclass(frozen=True, slots=True)
class WatchResult:
    epoch: str
    revision: int
    full: bool  # True: `peers` is every peer (the watcher was too far behind, or new)
    peers: list[Peer]
    removed: list[bytes]
    instances_changed: bool = False  # the list of instances changed since `since` (or full)


@dataclass(slots=True)
class WatchLog:
    epoch: str = field(default_factory=lambda: uuid.uuid4().hex)
    revision: int = 0
    entries: collections.deque[tuple[int, bytes]] = field(
        default_factory=lambda: collections.deque(maxlen=WATCH_LOG_LENGTH)
    )
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    closing: bool = False
    instances_revision: int = 0  # the revision at which the list of instances last changed

    def record_instances(self) -> None:
        self.record(NO_PEER)
        self.instances_revision = self.revision

    def record(self, public_key: bytes) -> None:
        """A new revision: wakes every waiting watcher."""
        self.revision += 1
        self.entries.append((self.revision, public_key))
        self.changed.set()
        self.changed = asyncio.Event()

    def stop_watchers(self) -> None:
        """Answer every waiting watch now (a stopping server must not wait for long polls)."""
        self.closing = True
        self.changed.set()

    async def watch(
        self, epoch: str | None, since: int | None, timeout_s: float, peers: Mapping[bytes, Peer]
    ) -> WatchResult:
        """Changes after revision `since` of `epoch`, waiting up to `timeout_s` for one; at once
        when closing. A full answer's peers are in no particular order."""
        if epoch == self.epoch and since == self.revision and not self.closing:
            if await set_within(self.changed, timeout_s) and not self.closing:
                await asyncio.sleep(WATCH_COALESCE_S)  # a burst of changes: one answer
        oldest = self.entries[0][0] if self.entries else self.revision + 1
        if epoch != self.epoch or since is None or since > self.revision or since < oldest - 1:
            return WatchResult(self.epoch, self.revision, True, list(peers.values()), [], True)
        return self._delta(since, peers)

    def _delta(self, since: int, peers: Mapping[bytes, Peer]) -> WatchResult:
        # Revisions in the log are consecutive: the newest `revision - since` entries are new.
        newer = itertools.islice(reversed(self.entries), self.revision - since)
        changed = dict.fromkeys(reversed([key for _, key in newer if key != NO_PEER]))
        current = [peers[key] for key in changed if key in peers]
        removed = [key for key in changed if key not in peers]
        instances_changed = since < self.instances_revision
        return WatchResult(self.epoch, self.revision, False, current, removed, instances_changed)
