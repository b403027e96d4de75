"""Endpoint damping: how often a peer's published endpoint may move (sans-I/O).

The responder confirms an endpoint at every authenticated keepalive, from wherever it comes.
A NAT reboot moves it once; a member sending from many ports moves it at will, and each move
is a registry revision that wakes every watcher, empties DNS answers and makes every agent
punch again. So each peer has a bucket of `burst` moves that refills one per `hold_s`: a NAT
reboot, or two, is published at the next keepalive; a flapping member gets one move per
`hold_s`, always to the newest endpoint it was seen at. A peer's first endpoint is not a move.
The table holds registered peers only (the caller checks).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from meshpeer.common.endpoints import Endpoint

from .bucket import Bucket
from .timers import ENDPOINT_HOLD_S, ENDPOINT_MOVES_BURST, RELAY_CHANGE_HOLD_S, RELAY_CHANGES_BURST


@dataclass(slots=True)
class EndpointDamper:
    hold_s: float = ENDPOINT_HOLD_S
    burst: float = ENDPOINT_MOVES_BURST
    damped: int = 0  # endpoints that were never published (for /metrics)
    _buckets: dict[bytes, Bucket] = field(default_factory=dict)
    _pending: dict[bytes, Endpoint] = field(default_factory=dict)

    def observe(
        self, key: bytes, observed: Endpoint, published: Endpoint | None, now: float
    ) -> bool:
        """True: publish `observed` now. False: it waits (or it is the published one)."""
        if observed == published:
            self._pending.pop(key, None)  # back where it was: nothing left to move
            return False
        if published is None or self._take(key, now):
            self._pending.pop(key, None)
            return True
        if key in self._pending:
            self.damped += 1
        self._pending[key] = observed
        return False

    def due(self, now: float) -> list[tuple[bytes, Endpoint]]:
        """Waiting endpoints whose peer has a move again: publish these now."""
        ready = [key for key in self._pending if self._take(key, now)]
        return [(key, self._pending.pop(key)) for key in ready]

    def drain(self) -> list[tuple[bytes, Endpoint]]:
        """Every waiting endpoint, move or not: a stopping server keeps the newest it saw."""
        waiting = list(self._pending.items())
        self._pending.clear()
        return waiting

    def forget(self, key: bytes) -> None:
        self._buckets.pop(key, None)
        self._pending.pop(key, None)

    def _take(self, key: bytes, now: float) -> bool:
        bucket = self._buckets.setdefault(key, Bucket(self.burst, now))
        return bucket.take(now, 1 / self.hold_s, self.burst) == 0.0


@dataclass(slots=True)
class ChangeRation:
    """How often a peer may change what every watcher hears of it beyond its endpoint (its
    relay partners, its LAN endpoints: one ration each): the same bucket, `burst` changes
    refilling one per `hold_s`; the caller refuses a change over it (HTTP 429) rather than
    holding it."""

    hold_s: float = RELAY_CHANGE_HOLD_S
    burst: float = RELAY_CHANGES_BURST
    _buckets: dict[bytes, Bucket] = field(default_factory=dict)

    def take(self, key: bytes, now: float) -> float:
        """0 when the change may go ahead, else the seconds until one may."""
        bucket = self._buckets.setdefault(key, Bucket(self.burst, now))
        return bucket.take(now, 1 / self.hold_s, self.burst)

    def forget(self, key: bytes) -> None:
        self._buckets.pop(key, None)
