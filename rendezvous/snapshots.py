"""Full peer lists for the watch API: built once per revision off the loop, and rationed.

At 50,000 peers a full list is about 10 MB of JSON and 340 ms of CPU. Building it on the event
loop for every request let four members looping on it hold DNS answers back by 600 ms. Here
each peer's JSON is kept until the peer changes, a list is built once per (epoch, revision)
and shared by every request for it, and each caller gets a full list at once and then one per
FULL_SNAPSHOT_INTERVAL_S.
"""

from __future__ import annotations

import asyncio
import collections
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from .bucket import Bucket
from .model import Peer, Rationed
from .timers import FULL_SNAPSHOT_BURST, FULL_SNAPSHOT_INTERVAL_S

MAX_CALLERS = 200_000  # callers remembered for rationing; the oldest are forgotten first
FRAGMENTS_PER_SLICE = 500  # peers' JSON made between two turns of the event loop (about 5 ms)


class SnapshotRationed(Rationed):
    """Too soon for another full list; `retry_after_s` says when."""

    def __init__(self, retry_after_s: float) -> None:
        message = f"a full peer list at most every {FULL_SNAPSHOT_INTERVAL_S:.0f} s"
        super().__init__(message, retry_after_s)


@dataclass(slots=True)
class SnapshotRation:
    """Per caller: a bucket of two full lists, refilled one per `interval_s` (sans-I/O)."""

    interval_s: float = FULL_SNAPSHOT_INTERVAL_S
    burst: float = FULL_SNAPSHOT_BURST
    refused: int = 0
    _buckets: collections.OrderedDict[bytes, Bucket] = field(
        default_factory=collections.OrderedDict
    )

    def take(self, caller: bytes, now: float) -> None:
        bucket = self._buckets.pop(caller, None) or Bucket(self.burst, now)
        self._buckets[caller] = bucket  # the most recent caller last: the oldest go first
        if len(self._buckets) > MAX_CALLERS:
            self._buckets.popitem(last=False)
        wait_s = bucket.take(now, 1 / self.interval_s, self.burst)
        if wait_s:
            self.refused += 1
            raise SnapshotRationed(wait_s)


@dataclass(slots=True)
class SnapshotCache:
    """The JSON body of the last full list, by (epoch, revision), from per-peer fragments kept
    until their peer changes: after the first list, one costs a join of byte strings and the
    JSON of the few peers that changed."""

    _key: tuple[str, int] | None = None
    _body: bytes = b""
    _fragments: dict[bytes, tuple[Peer, bytes]] = field(default_factory=dict)
    _building: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def body(
        self,
        epoch: str,
        revision: int,
        peers: Sequence[Peer],
        instances: list[dict[str, str]] | None = None,
    ) -> bytes:
        """The list at (epoch, revision): a change of `instances` is a revision of its own, so
        a body kept for a revision has the instances it was built with."""
        async with self._building:  # one build at a time; the others then find it made
            if self._key != (epoch, revision):
                await self._refresh(peers)
                fragments = [self._fragments[p.public_key][1] for p in peers]
                self._body = _document(epoch, revision, fragments, instances)
                self._key = (epoch, revision)
            return self._body

    async def _refresh(self, peers: Sequence[Peer]) -> None:
        fragments = self._fragments
        stale = [peer for peer in peers if fragments.get(peer.public_key, (None,))[0] is not peer]
        # In slices that let other work run between (a thread held the GIL for 340 ms at
        # 50,000 peers and the API's p99 reached 70 ms): about 5 ms a slice.
        for start in range(0, len(stale), FRAGMENTS_PER_SLICE):
            fragments.update(_fragments_of(stale[start : start + FRAGMENTS_PER_SLICE]))
            if len(stale) > FRAGMENTS_PER_SLICE:
                await asyncio.sleep(0)
        if len(fragments) > len(peers):  # peers were removed: forget their fragments
            current = {peer.public_key for peer in peers}
            for key in [key for key in fragments if key not in current]:
                del fragments[key]


def _fragments_of(peers: list[Peer]) -> dict[bytes, tuple[Peer, bytes]]:
    return {
        peer.public_key: (peer, json.dumps(peer.to_json(), separators=(",", ":")).encode())
        for peer in peers
    }


def _document(
    epoch: str, revision: int, fragments: list[bytes], instances: list[dict[str, str]] | None
) -> bytes:
    head_fields: dict[str, object] = {"epoch": epoch, "revision": revision, "full": True}
    if instances is not None:
        head_fields["instances"] = instances
    head = json.dumps(head_fields, separators=(",", ":"))
    return head[:-1].encode() + b',"removed":[],"peers":[' + b",".join(fragments) + b"]}"
