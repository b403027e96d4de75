"""Peers on the same LAN, found with mDNS (zeroconf): `_wireguard._udp.local.`

Each agent publishes its LAN addresses and WireGuard port, with its public key in TXT (`pub=`),
and browses for the others. A sighting only adds a candidate endpoint for a peer the rendezvous
already lists: a LAN announcement can never add a peer to the mesh.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import logging
import socket
from collections.abc import Callable
from typing import Any

from zeroconf import IPVersion, ServiceStateChange
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

logger = logging.getLogger("meshpeer.peer.lan")

SERVICE_TYPE = "_wireguard._udp.local."
RESOLVE_TIMEOUT_MS = 3000
Endpoint = tuple[str, int]
Sightings = dict[bytes, list[Endpoint]]


class LanDiscovery:
    def __init__(
        self,
        public_key: bytes,
        name: str,
        port: int,
        addresses: list[str],
        on_change: Callable[[Sightings], None],
    ) -> None:
        self.public_key = public_key
        self.name = name
        self.port = port
        self.addresses = addresses
        self._on_change = on_change
        self._sightings: dict[str, tuple[bytes, list[Endpoint]]] = {}  # by service name
        self._zeroconf: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        if not self.addresses:
            logger.info("no LAN address: mDNS discovery off")
            return
        self._zeroconf = AsyncZeroconf(interfaces=self.addresses, ip_version=IPVersion.V4Only)
        info = AsyncServiceInfo(
            SERVICE_TYPE,
            f"{self.name}.{SERVICE_TYPE}",
            addresses=[socket.inet_aton(address) for address in self.addresses],
            port=self.port,
            properties={"txtvers": "1", "pub": base64.b64encode(self.public_key).decode()},
            server=f"{self.name}.local.",
        )
        await self._zeroconf.async_register_service(info, allow_name_change=True)
        self._browser = AsyncServiceBrowser(
            self._zeroconf.zeroconf, SERVICE_TYPE, handlers=[self._on_service_state_change]
        )
        logger.info("mDNS: announcing %s on %s", SERVICE_TYPE, ", ".join(self.addresses))

    async def stop(self) -> None:
        if self._browser is not None:
            await self._browser.async_cancel()
        if self._zeroconf is not None:
            await self._zeroconf.async_unregister_all_services()
            await self._zeroconf.async_close()

    def _on_service_state_change(
        self, zeroconf: Any, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if state_change is ServiceStateChange.Removed:
            if self._sightings.pop(name, None) is not None:
                self._publish()
            return
        task = asyncio.get_running_loop().create_task(self._resolve(name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resolve(self, name: str) -> None:
        if self._zeroconf is None:
            return
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        if not await info.async_request(self._zeroconf.zeroconf, RESOLVE_TIMEOUT_MS):
            return
        sighting = parse_sighting(info.properties, info.parsed_addresses(), info.port)
        if sighting is None or sighting[0] == self.public_key:
            return
        if self._sightings.get(name) != sighting:
            self._sightings[name] = sighting
            self._publish()

    def _publish(self) -> None:
        merged: Sightings = {}
        for key, endpoints in self._sightings.values():
            merged.setdefault(key, []).extend(endpoints)
        self._on_change(merged)


def parse_sighting(
    properties: dict[bytes, bytes | None], addresses: list[str], port: int | None
) -> tuple[bytes, list[Endpoint]] | None:
    """A peer's key and LAN endpoints from an mDNS answer; None when anything is off."""
    pub = properties.get(b"pub")
    if not pub or port is None or not 0 < port < 65536:
        return None
    try:
        key = base64.b64decode(pub, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(key) != 32:
        return None
    endpoints = []
    for address in addresses:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            continue
        if ip.version == 4 and not ip.is_loopback and not ip.is_link_local:
            endpoints.append((str(ip), port))
    return (key, endpoints) if endpoints else None
