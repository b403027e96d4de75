"""The anti-replay window for transport counters (RFC 6479's sliding window, in one int)."""

from __future__ import annotations

from .timers import REJECT_AFTER_MESSAGES, REPLAY_WINDOW

_WINDOW_MASK = (1 << REPLAY_WINDOW) - 1


class ReplayWindow:
    """Accepts each counter at most once, and none older than REPLAY_WINDOW behind the newest."""

    __slots__ = ("_newest", "_seen")

    def __init__(self) -> None:
        self._newest = -1
        self._seen = 0  # bit i set: counter (newest - i) was accepted

    def accept(self, counter: int) -> bool:
        """Record `counter`; False if it was seen, is too old, or is past the limit.
        Call only after the packet authenticated, or a forger could move the window."""
        if counter >= REJECT_AFTER_MESSAGES:
            return False
        if counter > self._newest:
            shift = counter - self._newest
            # A jump past the whole window forgets it; never shift by a huge count.
            kept = (self._seen << shift) & _WINDOW_MASK if shift < REPLAY_WINDOW else 0
            self._seen = kept | 1
            self._newest = counter
            return True
        offset = self._newest - counter
        if offset >= REPLAY_WINDOW or self._seen >> offset & 1:
            return False
        self._seen |= 1 << offset
        return True
