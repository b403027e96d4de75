"""Which peers answer: a peer is online while its traffic keeps coming (sans-I/O).

Every peer sends a keepalive at least every PEER_KEEPALIVE_S (25 s), so a peer whose received
bytes have not grown for ONLINE_WINDOW_S (timers.py) has gone: `meshpeer status` says `offline`
within 30 s, where the age of the last handshake (up to 3 minutes on a live path) said `direct`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .timers import ONLINE_WINDOW_S
from .uapi import DeviceStatus


@dataclass(slots=True)
class Liveness:
    _seen: dict[bytes, tuple[int, float]] = field(default_factory=dict)  # rx bytes, when grown

    def observe(self, device: DeviceStatus, now: float) -> None:
        seen = self._seen
        for key, peer in device.peers.items():
            before = seen.get(key)
            if peer.rx_bytes and (before is None or peer.rx_bytes != before[0]):
                seen[key] = (peer.rx_bytes, now)
        for key in [key for key in seen if key not in device.peers]:
            del seen[key]

    def last_seen(self, key: bytes) -> float | None:
        seen = self._seen.get(key)
        return seen[1] if seen else None

    def online(self, key: bytes, now: float) -> bool:
        seen = self._seen.get(key)
        return seen is not None and now - seen[1] < ONLINE_WINDOW_S
