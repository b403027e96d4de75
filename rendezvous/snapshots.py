"""Full peer lists for the watch API: built once per revision off the loop, and rationed.

At 50,000 peers a full list is about 10 MB of JSON and 340 ms of CPU. Building it on the event
loop for every request let four members looping on it hold DNS answers back by 600 ms. Here
one thread builds it once per (epoch, revision), every request for that revision shares the
bytes, and each caller gets a full list at once and then one per FULL_SNAPSHOT_INTERVAL_S.
"""

from __future__ import annotations

import asyncio
import collections
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from .model import Peer
from .timers import FULL_SNAPSHOT_INTERVAL_S

MAX_CALLERS = 200_000  # callers remembered for rationing; the oldest are forgotten first


class SnapshotRationed(Exception):
    """Too soon for another full list; `retry_after_s` says when."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"a full peer list at most every {FULL_SNAPSHOT_INTERVAL_S:.0f} s")
        self.retry_after_s = retry_after_s


@dataclass(slots=True)
class SnapshotRation:
    """Per caller: a bucket of two full lists, refilled one per `interval_s` (sans-I/O)."""

    interval_s: float = FULL_SNAPSHOT_INTERVAL_S
    burst: float = 2.0
    refused: int = 0
    _buckets: collections.OrderedDict[bytes, tuple[float, float]] = field(
        default_factory=collections.OrderedDict
    )

    def take(self, caller: bytes, now: float) -> None:
        level, since = self._buckets.pop(caller, (self.burst, now))
        level = min(self.burst, level + (now - since) / self.interval_s)
        if level < 1:
            self._buckets[caller] = (level, now)
            self.refused += 1
            raise SnapshotRationed((1 - level) * self.interval_s)
        self._buckets[caller] = (level - 1, now)
        if len(self._buckets) > MAX_CALLERS:
            self._buckets.popitem(last=False)


@dataclass(slots=True)
class SnapshotCache:
    """The JSON body of the last full list, by (epoch, revision); one build at a time."""

    _key: tuple[str, int] | None = None
    _body: asyncio.Future[bytes] | None = None

    async def body(self, epoch: str, revision: int, peers: Sequence[Peer]) -> bytes:
        if self._key != (epoch, revision) or self._body is None:
            self._key = (epoch, revision)
            self._body = asyncio.ensure_future(
                asyncio.to_thread(render, epoch, revision, list(peers))
            )
        # shield: a client that hangs up must not cancel the build others wait for.
        return await asyncio.shield(self._body)


def render(epoch: str, revision: int, peers: list[Peer]) -> bytes:
    peers.sort(key=lambda peer: peer.name)
    document = {
        "epoch": epoch,
        "revision": revision,
        "full": True,
        "peers": [peer.to_json() for peer in peers],
        "removed": [],
    }
    return json.dumps(document, separators=(",", ":")).encode()
