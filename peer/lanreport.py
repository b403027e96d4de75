"""Our own LAN endpoints as the rendezvous should list them (PUT /v1/lan), sans-I/O.

Another peer behind our public address tries an mDNS sighting of us only where we said we are
over the authenticated API (paths.lan_to_try): so we say it, once mDNS knows what it announces,
and again whenever that changes. The rendezvous rations changes; a refused or failed report is
retried LAN_REPORT_RETRY_S later.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from meshpeer.common.endpoints import Endpoint, format_endpoint, lan_endpoint
from meshpeer.common.errors import InvalidInput
from meshpeer.common.limits import MAX_LAN_ENDPOINTS

from .timers import LAN_REPORT_RETRY_S


@dataclass(slots=True)
class LanReport:
    wanted: tuple[Endpoint, ...] | None = None  # None: mDNS has not chosen its addresses yet
    held: tuple[Endpoint, ...] | None = None  # what the rendezvous answered it holds
    retry_at: float = 0.0

    def want(self, addresses: Iterable[str], port: int) -> None:
        """The addresses mDNS announces, with our WireGuard port: the first MAX_LAN_ENDPOINTS
        the rendezvous would take (it refuses loopback, link-local and the like)."""
        kept: list[Endpoint] = []
        for address in addresses:
            try:
                endpoint = lan_endpoint(format_endpoint((address, port)))
            except InvalidInput:
                continue
            if endpoint not in kept and len(kept) < MAX_LAN_ENDPOINTS:
                kept.append(endpoint)
        self.wanted = tuple(kept)

    def due(self, now: float) -> tuple[Endpoint, ...] | None:
        """What to tell the rendezvous now, if anything."""
        if self.wanted is None or self.wanted == self.held or now < self.retry_at:
            return None
        return self.wanted

    def told(self, held: tuple[Endpoint, ...]) -> None:
        self.held = held

    def failed(self, now: float) -> None:
        self.retry_at = now + LAN_REPORT_RETRY_S
