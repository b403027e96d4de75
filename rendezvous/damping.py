"""Endpoint damping: how often a peer's published endpoint may move (sans-I/O).

The responder confirms an endpoint at every authenticated keepalive, from wherever it comes.
A NAT reboot moves it once; a member sending from many ports moves it at will, and each move
is a registry revision that wakes every watcher, empties DNS answers and makes every agent
punch again. So a move is published at once only when the endpoint has been still for
`hold_s`; otherwise the newest one waits until `hold_s` after the last move, and the ones in
between are never published. The table holds registered peers only (the caller checks).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .model import Endpoint
from .timers import ENDPOINT_HOLD_S


@dataclass(slots=True)
class EndpointDamper:
    hold_s: float = ENDPOINT_HOLD_S
    damped: int = 0  # endpoints that were never published (for /metrics)
    _moved_at: dict[bytes, float] = field(default_factory=dict)
    _pending: dict[bytes, Endpoint] = field(default_factory=dict)

    def observe(
        self, key: bytes, observed: Endpoint, published: Endpoint | None, now: float
    ) -> bool:
        """True: publish `observed` now. False: it waits (or it is the published one)."""
        if observed == published:
            self._pending.pop(key, None)  # back where it was: nothing left to move
            return False
        moved_at = self._moved_at.get(key)
        if published is None or moved_at is None or now - moved_at >= self.hold_s:
            self._moved_at[key] = now
            self._pending.pop(key, None)
            return True
        if key in self._pending:
            self.damped += 1
        self._pending[key] = observed
        return False

    def due(self, now: float) -> list[tuple[bytes, Endpoint]]:
        """Waiting endpoints whose hold is over: publish these now."""
        ready = [k for k in self._pending if now - self._moved_at.get(k, now) >= self.hold_s]
        for key in ready:
            self._moved_at[key] = now
        return [(key, self._pending.pop(key)) for key in ready]

    def drain(self) -> list[tuple[bytes, Endpoint]]:
        """Every waiting endpoint, hold or not: a stopping server keeps the newest it saw."""
        waiting = list(self._pending.items())
        self._pending.clear()
        return waiting

    def forget(self, key: bytes) -> None:
        self._moved_at.pop(key, None)
        self._pending.pop(key, None)
