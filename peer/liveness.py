"""Which peers answer: a peer is online while its traffic keeps coming (sans-I/O).

Every peer sends a keepalive at least every PEER_KEEPALIVE_S (25 s), so a peer whose received
bytes have not grown for ONLINE_WINDOW_S (timers.py) has gone: `meshpeer status` says `offline`
within 30 s, where the age of the last handshake (up to 3 minutes on a live path) said `direct`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .timers import KEEPALIVE_BYTES, ONLINE_WINDOW_S, STALL_S
from .uapi import DeviceStatus


@dataclass(slots=True)
class _Sent:
    tx_bytes: int  # when rx last grew
    first_unanswered: float | None = None  # when more than a keepalive went out since


# What came from a peer so far: its bytes in, and its latest handshake. Both, since the
# counters start from nothing when the WireGuard peer is written anew (a new session at once):
# a path that had carried one handshake (92 bytes in) and was answered once more after the
# rewrite showed 92 again, and read as silent. Its handshake is new, and that is heard.
_Heard = tuple[int, float | None]


@dataclass(slots=True)
class Liveness:
    _seen: dict[bytes, tuple[_Heard, float]] = field(default_factory=dict)  # ... and since when
    _sent: dict[bytes, _Sent] = field(default_factory=dict)

    def observe(self, device: DeviceStatus, now: float) -> None:
        seen = self._seen
        for key, peer in device.peers.items():
            before, heard = seen.get(key), (peer.rx_bytes, peer.latest_handshake)
            if peer.rx_bytes and (before is None or heard != before[0]):
                seen[key] = (heard, now)
                self._sent[key] = _Sent(peer.tx_bytes)
            else:
                self._note_sent(key, peer.tx_bytes, now)
        for table in (seen, self._sent):
            for key in [key for key in table if key not in device.peers]:
                del table[key]

    def _note_sent(self, key: bytes, tx_bytes: int, now: float) -> None:
        sent = self._sent.setdefault(key, _Sent(tx_bytes))
        if tx_bytes < sent.tx_bytes:  # written anew: its counters start again
            sent = self._sent[key] = _Sent(tx_bytes)
        if sent.first_unanswered is None and tx_bytes - sent.tx_bytes > KEEPALIVE_BYTES:
            sent.first_unanswered = now

    def told(self, key: bytes, tx_bytes: int) -> None:
        """The rendezvous was told: a new stall needs new unanswered traffic."""
        self._sent[key] = _Sent(tx_bytes)

    def stalled(self, key: bytes, now: float) -> bool:
        """Data went to the peer STALL_S ago and nothing came back since: its mapping, or
        ours, may have moved (a NAT reboot, a new network)."""
        sent = self._sent.get(key)
        return bool(sent and sent.first_unanswered and now - sent.first_unanswered >= STALL_S)

    def last_seen(self, key: bytes) -> float | None:
        seen = self._seen.get(key)
        return seen[1] if seen else None

    def online(self, key: bytes, now: float) -> bool:
        seen = self._seen.get(key)
        return seen is not None and now - seen[1] < ONLINE_WINDOW_S
