"""The agent's WireGuard interface: which backend makes it, making it with the rendezvous as its
first peer, and taking it down. Netlink and name resolution run off the event loop's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from pathlib import Path

from meshpeer.common.endpoints import parse_host_port
from meshpeer.common.keys import parse_key

from .errors import AgentError, BackendError
from .kernel_wg import KernelBackend
from .links import Links
from .mesh import host_route
from .state import Membership
from .timers import RENDEZVOUS_KEEPALIVE_S
from .uapi import PeerConfig
from .userspace_wg import UserspaceBackend
from .wireguard import Backend, kernel_has_wireguard

logger = logging.getLogger("meshpeer.peer")

MTU = 1420  # 1500 minus WireGuard's 80 bytes over IPv6: safe on any ordinary path


def choose_backend(choice: str, links: Links) -> Backend:
    if choice == "kernel" or (choice == "auto" and kernel_has_wireguard()):
        return KernelBackend(links)
    return UserspaceBackend()


async def free_interface(links: Links, ifname: str) -> None:
    """Take a link of ours left by an earlier run; refuse to touch anyone else's."""
    if await asyncio.to_thread(links.index, ifname) is None:
        return
    if not await asyncio.to_thread(links.is_ours, ifname):
        raise AgentError(
            f"interface {ifname} exists and meshpeer did not make it: "
            "choose another with --interface"
        )
    logger.info("removing %s left over from an earlier run", ifname)
    await asyncio.to_thread(links.delete, ifname)


async def make_interface(
    backend: Backend,
    links: Links,
    membership: Membership,
    private_key: bytes,
    ifname: str,
    listen_port: int,
) -> None:
    await backend.create(ifname, private_key, listen_port)
    prefix = ipaddress.ip_network(membership.network).prefixlen
    await asyncio.to_thread(links.claim, ifname, f"{membership.address}/{prefix}", MTU)
    await backend.apply([await rendezvous_peer(membership)], [])
    logger.info(
        "interface %s up (%s backend), listening on udp/%d", ifname, backend.name, listen_port
    )


async def rendezvous_peer(membership: Membership) -> PeerConfig:
    """The rendezvous as a WireGuard peer: its mesh address only, and a short keepalive. Its
    endpoint may be a name: resolved by the loop's resolver (in a thread), never on the loop."""
    host, port = parse_host_port(membership.rendezvous_endpoint, "the rendezvous's endpoint")
    loop = asyncio.get_running_loop()
    found = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    address = str(found[0][4][0])
    return PeerConfig(
        parse_key(membership.rendezvous_key),
        (host_route(membership.rendezvous_address),),
        (address, port),
        RENDEZVOUS_KEEPALIVE_S,
    )


def enable_forwarding(routes: tuple[str, ...]) -> None:
    """A peer that carries a LAN for the mesh must forward between them. The switch is the
    host's, not the link's: from then on the host forwards anything any peer sends it to
    any network it can reach, not only to the advertised LAN (the README says how to
    narrow that with nftables). Blocking file writes: call it in a thread."""
    versions = {ipaddress.ip_network(route).version for route in routes}
    for version in versions:
        knob = "ipv4/ip_forward" if version == 4 else "ipv6/conf/all/forwarding"
        Path("/proc/sys/net", knob).write_text("1\n")
        logger.warning(
            "forwarding on for the whole host (net.%s=1) to carry %s: mesh peers can reach "
            "whatever this host routes to unless a firewall limits them to it",
            knob.replace("/", "."),
            ",".join(routes),
        )


async def tear_down(backend: Backend, links: Links, ifname: str) -> None:
    with contextlib.suppress(BackendError, OSError):
        await backend.destroy()
    with contextlib.suppress(OSError):
        if await asyncio.to_thread(links.is_ours, ifname):
            await asyncio.to_thread(links.delete, ifname)
    logger.info("interface %s removed", ifname)
