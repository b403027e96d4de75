"""A wg-quick configuration for a device that cannot run the agent (a phone, a router).

Such a device cannot follow the mesh's endpoints, so every mesh peer is reached through the
relay: each [Peer] has the rendezvous's WireGuard endpoint, and the relay forwards by mac1 and
index to the peer's real mapping. The rendezvous itself is a peer too, with a short keepalive,
so the device's NAT mapping stays confirmed and published: agents then reach the device
directly where its NAT lets them, and through the relay otherwise. Pure text in, text out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from meshpeer.common.endpoints import Endpoint, IPAddress, format_endpoint
from meshpeer.common.keys import encode_key

from .model import Peer
from .timers import CONFIG_PEER_KEEPALIVE_S, CONFIG_RENDEZVOUS_KEEPALIVE_S


@dataclass(frozen=True, slots=True)
class Rendezvous:
    public_key: bytes
    endpoint: Endpoint  # its public WireGuard endpoint, where the relay listens too
    address: IPAddress  # its mesh address


def render(
    private_key: bytes,
    device: Peer,
    rendezvous: Rendezvous,
    peers: Sequence[Peer],
) -> str:
    """The device's wg-quick file: itself, the rendezvous, then every other peer via the relay."""
    relay_endpoint = format_endpoint(rendezvous.endpoint)
    lines = [
        f"# meshpeer: {device.name}, made by `rendezvous peer add --config`",
        "[Interface]",
        f"PrivateKey = {encode_key(private_key)}",
        f"Address = {device.address}/{device.address.max_prefixlen}",
    ]
    lines += [
        "",
        "# the rendezvous: keeps this device's NAT mapping known to the mesh",
        "[Peer]",
        f"PublicKey = {encode_key(rendezvous.public_key)}",
        f"AllowedIPs = {_host(rendezvous.address)}",
        f"Endpoint = {relay_endpoint}",
        f"PersistentKeepalive = {CONFIG_RENDEZVOUS_KEEPALIVE_S}",
    ]
    for peer in peers:
        if peer.public_key == device.public_key:
            continue
        allowed = [_host(peer.address), *(str(route) for route in peer.routes)]
        lines += [
            "",
            f"# {peer.name}, through the relay",
            "[Peer]",
            f"PublicKey = {encode_key(peer.public_key)}",
            f"AllowedIPs = {', '.join(allowed)}",
            f"Endpoint = {relay_endpoint}",
            f"PersistentKeepalive = {CONFIG_PEER_KEEPALIVE_S}",
        ]
    return "\n".join(lines) + "\n"


def _host(address: IPAddress) -> str:
    return f"{address}/{address.max_prefixlen}"
