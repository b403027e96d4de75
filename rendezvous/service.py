"""The serving process: the handshake responder, the registry and the HTTP API on their sockets."""

from __future__ import annotations

import asyncio
import collections
import logging
import resource
import time
from collections.abc import Awaitable
from typing import TypeVar

import dns.name

from meshpeer.common.endpoints import Endpoint, format_endpoint, unmap_address
from meshpeer.common.errors import Failure
from meshpeer.dns.ratelimit import ResponseRateLimiter
from meshpeer.dns.records import PeerEntry, Zone, ZoneConfig
from meshpeer.dns.server import Authority

from .api import RATION, create_app
from .apiserve import ApiServer
from .dnsserve import DnsServer
from .handshake import EndpointConfirmed, Event, InitiationAccepted, Responder
from .metrics import ApiCounters, RelayFigures, Snapshot
from .model import Peer
from .registry import ChangeKind, Registry
from .relay import Relay
from .timers import DNS_TCP_CONNECTIONS
from .tls import server_context
from .udp import DatagramEndpoint
from .wgport import serve_handshakes

logger = logging.getLogger("meshpeer.rendezvous")
T = TypeVar("T")
SERIAL_MARGIN = 4096  # changes that may follow the last kept serial (joins and moves: few a second)
FILES_RESERVED = 64  # the database, the UDP sockets, logs, a thread's needs


class ListenError(Failure):
    """A socket could not be opened; the message names the flag to change."""


class Rendezvous:
    def __init__(self, registry: Registry, responder: Responder | None = None) -> None:
        self.registry = registry
        self.responder = responder or Responder(registry.private_key)
        self.counters = ApiCounters()
        self.zone = _zone_for(registry)
        self.authority = Authority(
            self.zone, ResponseRateLimiter(), axfr_allow=registry.settings.dns_axfr_allow
        )
        registry.zone_serial = lambda: self.zone.serial  # kept, so it never goes backwards
        self._dns = DnsServer(self.authority)
        rate = registry.settings.relay_mbit_s * 1_000_000 / 8  # bytes a second
        self.relay = Relay(bytes_per_s=rate, burst_bytes=rate)
        self._udp: DatagramEndpoint | None = None
        self._api: ApiServer | None = None
        for peer in registry.peers():
            # The stored TAI64N floor: an initiation recorded before a restart stays refused.
            self.responder.authorize(peer.public_key, peer.handshake_timestamp)
            self.zone.put(zone_entry(peer))
            self.relay.set_endpoint(peer.public_key, peer.endpoint)
        for peer in registry.peers():  # once every peer is known, so partners are found
            self._relay_partners(peer)
        registry.subscribe(self._on_registry_change)

    async def start(self) -> None:
        settings = self.registry.settings
        self.registry.start_background()
        self._udp = await _listen(
            "--wg-listen",
            settings.wg_listen,
            serve_handshakes(
                self.responder, *settings.wg_listen, self._on_handshake_event, self.relay
            ),
        )
        files = self.registry.tls_files
        self._api = ApiServer(
            create_app(self.registry, self.snapshot, self.counters),
            server_context(files) if files else None,
            api_connections(open_files_limit()),
        )
        await _listen("--api-listen", settings.api_listen, self._api.start(*settings.api_listen))
        await _listen("--dns-listen", settings.dns_listen, self._dns.start(*settings.dns_listen))
        await self.registry.keep_settings()  # every socket is open: these settings serve
        logger.info(
            "serving %d peers: WireGuard on udp %s (peers dial %s), DNS for %s on %s, "
            "API on %s (%s, %s)",
            len(self.registry),
            format_endpoint(settings.wg_listen),
            format_endpoint(settings.public_endpoint),
            settings.zone,
            format_endpoint(settings.dns_listen),
            format_endpoint(settings.api_listen),
            settings.public_api_url,
            f"TLS pinned {self.registry.tls_pin}"
            if self.registry.tls_pin
            else "plain HTTP behind a TLS proxy",
        )

    async def stop(self) -> None:
        """Answer the long polls, close the sockets, then write what the registry still holds
        (observations and the zone serial): well within 2 s. Safe to call twice."""
        self.registry.stop_watchers()
        udp, self._udp = self._udp, None
        api, self._api = self._api, None
        if udp is not None:
            udp.close()
        if api is not None:
            await api.stop()
        await self._dns.stop()
        await self.registry.close()

    def snapshot(self) -> Snapshot:
        return Snapshot(
            counts=dict(self.responder.counts),
            # Datagrams the socket dropped before any core saw them count with the responder's.
            drops=dict(self.responder.drops + self._socket_drops()),
            under_load=self.responder.under_load(asyncio.get_running_loop().time()),
            peers=len(self.registry),
            peers_with_endpoint=self.registry.with_endpoint(),
            api_requests=dict(self.counters.requests),
            dns={**self.authority.counts, **self._dns.udp_drops},
            held_back=self._held_back(),
            relay=RelayFigures(
                self.relay.packets, self.relay.bytes, self.relay.pairs(), dict(self.relay.drops)
            ),
        )

    def _socket_drops(self) -> collections.Counter[str]:
        # A copy taken in one step: the reader thread may add a key while Counter's + iterates.
        return (
            collections.Counter(dict(self._udp.drops))
            if self._udp is not None
            else collections.Counter()
        )

    def _held_back(self) -> dict[str, int]:
        held = {
            "endpoint_moves_damped": self.registry.damper.damped,
            "dns_tcp_connections_refused": self._dns.budget.refused,
        }
        if self._api is not None:
            held["api_connections_refused"] = self._api.budget.refused
            held["full_lists_rationed"] = self._api.app[RATION].refused
        return held

    def _on_handshake_event(self, event: Event) -> None:
        now = time.time()
        if isinstance(event, InitiationAccepted):
            self.registry.observe_handshake(event.public_key, event.timestamp, now)
        elif isinstance(event, EndpointConfirmed):
            host, port = event.source
            source = (unmap_address(host), port)
            # As the socket sees it, at the datagram clock (the loop's: udp.py).
            loop_now = asyncio.get_running_loop().time()
            self.relay.set_endpoint(event.public_key, event.source, loop_now)
            self.registry.observe_endpoint(event.public_key, source, now)

    def _on_registry_change(self, kind: ChangeKind, peer: Peer) -> None:
        if kind == "removed":
            self.responder.revoke(peer.public_key)
            self.relay.remove(peer.public_key)
            self.zone.remove(peer.public_key)
            logger.info("peer %s removed", peer.name)
            return
        self.zone.put(zone_entry(peer))  # the next DNS answer already has it
        if kind == "added":
            self.responder.authorize(peer.public_key, peer.handshake_timestamp)
            logger.info("peer %s registered (%s)", peer.name, peer.address)
        self._relay_partners(peer)

    def _relay_partners(self, peer: Peer) -> None:
        """Registered peers only: a removed key left in someone's list relays nothing."""
        named = [key for key in peer.relay_partners if self.registry.peer(key) is not None]
        self.relay.set_partners(peer.public_key, named)


def zone_entry(peer: Peer) -> PeerEntry:
    host_route = f"{peer.address}/{peer.address.max_prefixlen}"
    return PeerEntry(
        public_key=peer.public_key,
        name=peer.name,
        address=str(peer.address),
        allowed=(host_route, *(str(route) for route in peer.routes)),
        endpoint=peer.endpoint,
    )


def _zone_for(registry: Registry) -> Zone:
    settings = registry.settings
    config = ZoneConfig(
        origin=dns.name.from_text(settings.zone),
        ttl=settings.dns_ttl,
        nameserver=settings.public_endpoint[0],
    )
    # The serial only moves forward, across restarts too: from the clock, or past the last one
    # kept, with room for the changes made after it was kept (at most a second's worth).
    kept = registry.stored_zone_serial
    serial = max(int(time.time()), kept + SERIAL_MARGIN if kept else 0) % 2**32 or 1
    return Zone(config, serial=serial)


def open_files_limit() -> int:
    """Raise the soft limit on open files to the hard one, and say so: every connection and
    socket is one, and the default 1,024 is what a slowloris exhausted first."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            return soft
        logger.info("open files: raised the limit from %d to %d", soft, hard)
        return hard
    return soft


def api_connections(open_files: int) -> int:
    """What the API may hold open: most of the descriptors, after DNS's and a reserve."""
    return max(64, open_files - DNS_TCP_CONNECTIONS - FILES_RESERVED)


async def _listen(flag: str, address: Endpoint, opening: Awaitable[T]) -> T:
    try:
        return await opening
    except OSError as error:
        reason = error.strerror or str(error)
        raise ListenError(
            f"cannot listen on {format_endpoint(address)} ({reason}); choose another {flag}"
        ) from None
