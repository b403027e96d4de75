"""The serving process: the handshake responder, the registry and the HTTP API on their sockets."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import TypeVar

import dns.name
from aiohttp import web

from meshpeer.dns.ratelimit import ResponseRateLimiter
from meshpeer.dns.records import PeerEntry, Zone, ZoneConfig
from meshpeer.dns.server import Authority, DnsServer

from .api import create_app
from .handshake import EndpointConfirmed, Event, InitiationAccepted, Responder
from .metrics import ApiCounters, Snapshot
from .model import Endpoint, Peer, format_endpoint, unmap_address
from .registry import ChangeKind, Registry
from .tls import server_context
from .udp import DatagramEndpoint, serve_handshakes

logger = logging.getLogger("meshpeer.rendezvous")
T = TypeVar("T")


class ListenError(Exception):
    """A socket could not be opened; the message names the flag to change."""


class Rendezvous:
    def __init__(self, registry: Registry, responder: Responder | None = None) -> None:
        self.registry = registry
        self.responder = responder or Responder(registry.private_key)
        self.counters = ApiCounters()
        self.zone = _zone_for(registry)
        self.authority = Authority(self.zone, ResponseRateLimiter())
        self._dns = DnsServer(self.authority)
        self._udp: DatagramEndpoint | None = None
        self._runner: web.AppRunner | None = None
        for peer in registry.peers():
            # The stored TAI64N floor: an initiation recorded before a restart stays refused.
            self.responder.authorize(peer.public_key, peer.handshake_timestamp)
            self.zone.put(zone_entry(peer))
        registry.subscribe(self._on_registry_change)

    async def start(self) -> None:
        settings = self.registry.settings
        self.registry.start_background()
        self._udp = await _listen(
            "--wg-listen",
            settings.wg_listen,
            serve_handshakes(self.responder, *settings.wg_listen, self._on_handshake_event),
        )
        self._runner = web.AppRunner(
            create_app(self.registry, self.snapshot, self.counters), access_log=None
        )
        await self._runner.setup()
        files = self.registry.tls_files
        site = web.TCPSite(
            self._runner,
            *settings.api_listen,
            reuse_address=True,
            ssl_context=server_context(files) if files else None,
        )
        await _listen("--api-listen", settings.api_listen, site.start())
        await _listen("--dns-listen", settings.dns_listen, self._dns.start(*settings.dns_listen))
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
        """Close the sockets, then write what the registry still holds; safe to call twice."""
        udp, self._udp = self._udp, None
        runner, self._runner = self._runner, None
        if udp is not None:
            udp.close()
        if runner is not None:
            await runner.cleanup()
        await self._dns.stop()
        await self.registry.close()

    def snapshot(self) -> Snapshot:
        return Snapshot(
            counts=dict(self.responder.counts),
            drops=dict(self.responder.drops),
            under_load=self.responder.under_load(asyncio.get_running_loop().time()),
            peers=len(self.registry),
            peers_with_endpoint=self.registry.with_endpoint(),
            api_requests=dict(self.counters.requests),
            dns=dict(self.authority.counts),
        )

    def _on_handshake_event(self, event: Event) -> None:
        now = time.time()
        if isinstance(event, InitiationAccepted):
            self.registry.observe_handshake(event.public_key, event.timestamp, now)
        elif isinstance(event, EndpointConfirmed):
            host, port = event.source
            self.registry.observe_endpoint(event.public_key, (unmap_address(host), port), now)

    def _on_registry_change(self, kind: ChangeKind, peer: Peer) -> None:
        if kind == "removed":
            self.responder.revoke(peer.public_key)
            self.zone.remove(peer.public_key)
            logger.info("peer %s removed", peer.name)
            return
        self.zone.put(zone_entry(peer))  # the next DNS answer already has it
        if kind == "added":
            self.responder.authorize(peer.public_key, peer.handshake_timestamp)
            logger.info("peer %s registered (%s)", peer.name, peer.address)


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
        rendezvous_address=str(settings.rendezvous_address),
    )
    # The serial only moves forward, across restarts too: it starts from the clock.
    return Zone(config, serial=int(time.time()))


async def _listen(flag: str, address: Endpoint, opening: Awaitable[T]) -> T:
    try:
        return await opening
    except OSError as error:
        reason = error.strerror or str(error)
        raise ListenError(
            f"cannot listen on {format_endpoint(address)} ({reason}); choose another {flag}"
        ) from None
