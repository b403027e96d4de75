"""The `rendezvous peer ...` and `rendezvous peers` commands: peers registered by hand (a phone
or box that cannot run the agent gets its wg-quick configuration), their routes, the listing."""

from __future__ import annotations

import argparse
import io
import json
import sys
import time

import segno
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from meshpeer.common.console import print_table
from meshpeer.common.endpoints import IPNetwork, format_endpoint
from meshpeer.common.errors import UsageError
from meshpeer.common.keys import parse_key
from meshpeer.dns.naming import parse_name

from . import wgquick
from .model import Peer, parse_cidr, parse_routes
from .noise import public_bytes
from .registry import Registry
from .timers import RELAY_PARTNERS_PER_PEER


async def peer_add(registry: Registry, args: argparse.Namespace) -> None:
    if args.config == (args.public_key is not None):
        raise UsageError("give --public-key KEY, or --config to make the key and its config")
    settings = registry.settings
    routes = parse_routes(args.routes, settings.network, settings.own_addresses)
    name = parse_name(args.name)
    if not args.config:
        peer = await registry.add_peer(parse_key(args.public_key, "--public-key"), name, routes)
        print(peer.address)
        return
    private_key = X25519PrivateKey.generate()
    peer = await registry.add_peer(public_bytes(private_key), name, routes)
    others = [other for other in registry.peers() if other.public_key != peer.public_key]
    reached = others[:RELAY_PARTNERS_PER_PEER]
    await registry.set_relay_partners(peer, tuple(other.public_key for other in reached))
    rendezvous = wgquick.Rendezvous(
        registry.public_key, settings.public_endpoint, settings.rendezvous_address
    )
    text = wgquick.render(private_key.private_bytes_raw(), peer, rendezvous, reached)
    print(text, end="")
    if sys.stdout.isatty():
        print(_qr(text), end="")
    print(
        f"{name} is {peer.address}: the only copy of its private key is above; "
        f"{len(reached)} peers are in its configuration"
        + (f" (at most {RELAY_PARTNERS_PER_PEER})" if len(others) > len(reached) else ""),
        file=sys.stderr,
    )


def _qr(text: str) -> str:
    """The configuration as a QR code in block characters, as WireGuard's apps scan it."""
    out = io.StringIO()
    segno.make(text, error="l").terminal(out=out, compact=True)
    return out.getvalue()


async def peer_remove(registry: Registry, args: argparse.Namespace) -> None:
    peer = await registry.remove_peer(args.peer)
    print(f"removed {peer.name} ({peer.address})")


async def routes_approve(registry: Registry, args: argparse.Namespace) -> None:
    settings = registry.settings
    routes = (
        None
        if args.routes is None
        else parse_routes(args.routes, settings.network, settings.own_addresses)
    )
    peer = await registry.grant_routes(args.peer, routes)
    print(f"{peer.name} carries {_cidrs(peer.routes)}; waiting: {_cidrs(peer.pending_routes)}")


async def routes_revoke(registry: Registry, args: argparse.Namespace) -> None:
    routes = tuple(parse_cidr(item, "route") for item in args.routes.split(",") if item.strip())
    peer = await registry.revoke_routes(args.peer, routes)
    print(f"{peer.name} carries {_cidrs(peer.routes)}; waiting: {_cidrs(peer.pending_routes)}")


def _cidrs(routes: tuple[IPNetwork, ...]) -> str:
    return ",".join(str(route) for route in routes) or "none"


async def peers(registry: Registry, args: argparse.Namespace) -> None:
    listed = registry.peers()
    if args.json:
        print(json.dumps([peer.to_json(operator=True) for peer in listed], indent=2))
        return
    rows = [["NAME", "ADDRESS", "ENDPOINT", "HANDSHAKE", "ROUTES", "RELAYED WITH", "PUBLIC KEY"]]
    now = time.time()
    relayed = _relayed_with(listed)
    rows.extend(_peer_row(peer, now, relayed.get(peer.public_key, [])) for peer in listed)
    print_table(rows)


def _relayed_with(listed: list[Peer]) -> dict[bytes, list[str]]:
    """Each peer's relay partners by name, whichever side of the pair asked."""
    names = {peer.public_key: peer.name for peer in listed}
    pairs: dict[bytes, set[str]] = {}
    for peer in listed:
        for key in peer.relay_partners:
            if key in names:
                pairs.setdefault(peer.public_key, set()).add(names[key])
                pairs.setdefault(key, set()).add(peer.name)
    return {key: sorted(partners) for key, partners in pairs.items()}


def _peer_row(peer: Peer, now: float, relayed_with: list[str]) -> list[str]:
    return [
        peer.name,
        str(peer.address),
        format_endpoint(peer.endpoint) if peer.endpoint else "-",
        _ago(peer.last_handshake, now),
        _routes_cell(peer),
        ",".join(relayed_with) or "-",
        peer.public_key_b64,
    ]


def _routes_cell(peer: Peer) -> str:
    granted = [str(route) for route in peer.routes]
    waiting = [f"{route} (not approved)" for route in peer.pending_routes]
    return ",".join(granted + waiting) or "-"


def _ago(moment: float | None, now: float) -> str:
    if moment is None:
        return "never"
    seconds = max(0, int(now - moment))
    if seconds < 120:
        return f"{seconds}s ago"
    if seconds < 7200:
        return f"{seconds // 60}m ago"
    return f"{seconds // 3600}h ago"
