"""The token bucket every ration of the rendezvous uses (sans-I/O): `level` tokens, refilled at
`rate_per_s` up to `burst`, each take costing `cost` of them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Bucket:
    level: float
    at: float = float("-inf")  # when `level` was last brought up to date

    def take(self, now: float, rate_per_s: float, burst: float, cost: float = 1.0) -> float:
        """Take `cost`: 0 when there was enough, else the seconds until there is (nothing
        taken)."""
        self.level = min(burst, self.level + max(0.0, now - self.at) * rate_per_s)
        self.at = now
        if self.level < cost:
            return (cost - self.level) / rate_per_s
        self.level -= cost
        return 0.0
