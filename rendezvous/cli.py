"""Command line of the rendezvous (``rendezvous``): serve, and administer the data folder.

Every subcommand works on one data folder (`--data-dir`, `RENDEZVOUS_DATA_DIR`, or the shared
default), so `rendezvous token create` needs no flags next to a running `rendezvous serve`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import aiohttp

from meshpeer.common import tokens
from meshpeer.common.aiohttp_pinning import PinnedKey
from meshpeer.common.console import (
    FAILURE,
    USAGE_ERROR,
    OneLineParser,
    PrintVersion,
    configure_logging,
    print_table,
    report,
)
from meshpeer.common.endpoints import format_endpoint
from meshpeer.common.errors import Failure, UsageError
from meshpeer.common.keys import encode_key

from . import engines, peercommands
from . import settings as config
from .model import (
    parse_duration,
    parse_label,
    parse_routes,
)
from .registry import ADMIN_TOKEN_NAME, Registry
from .service import Rendezvous
from .timers import HEALTH_TIMEOUT_S

PROG = "rendezvous"
_SERVE_FLAGS = {
    "zone": "DNS zone the peers are published in (default mesh.internal.)",
    "network": "mesh network, as a CIDR (default 10.77.0.0/16)",
    "wg_listen": "HOST:PORT of the WireGuard responder (default 0.0.0.0:51820)",
    "dns_listen": "HOST:PORT of the DNS server, UDP and TCP (default 0.0.0.0:53)",
    "api_listen": "HOST:PORT of the HTTP API (default 0.0.0.0:51821)",
    "public_endpoint": "HOST:PORT peers dial for WireGuard (default: this host's address)",
    "public_api_url": "URL peers use for the API (default http://PUBLIC-HOST:API-PORT)",
    "dns_ttl": "TTL of the DNS records in seconds (default 0, as wgsd: endpoints move)",
    "tls_cert": "the API's certificate, PEM (default: one the rendezvous makes itself)",
    "tls_key": "the private key of --tls-cert, PEM",
    "dns_axfr_allow": "CIDRs allowed to transfer the zone (AXFR), comma-separated (default none)",
    "relay_rate": "Mbit/s each peer may send through the relay (default 100)",
}


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=PROG,
        description=(
            "The meshpeer rendezvous: completes WireGuard handshakes with every registered peer, "
            "records each NAT-mapped endpoint and publishes it as DNS-SD."
        ),
    )
    parser.add_argument("--version", action=PrintVersion)
    common = OneLineParser(add_help=False)
    common.add_argument(
        "--data-dir",
        type=Path,
        help="the rendezvous's data folder (env RENDEZVOUS_DATA_DIR; "
        f"default {config.default_data_dir()})",
    )
    common.add_argument(
        "--database",
        metavar="URL",
        help="postgresql://USER:PASSWORD@HOST/DATABASE shared by several rendezvous (env "
        f"{engines.DATABASE_VARIABLE}; default SQLite in the data folder)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser("serve", parents=[common], help="run the rendezvous")
    for name, text in _SERVE_FLAGS.items():
        flag = "--" + name.replace("_", "-")
        serve.add_argument(flag, dest=name, help=f"{text}; env RENDEZVOUS_{name.upper()}")
    serve.add_argument(
        "--behind-tls-proxy",
        action="store_const",
        const="1",
        help="serve the API as plain HTTP for a TLS proxy in front of it; needs "
        "--public-api-url https://...; env RENDEZVOUS_BEHIND_TLS_PROXY=1",
    )
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])

    token = commands.add_parser("token", help="join tokens").add_subparsers(
        dest="token_command", metavar="ACTION", required=True
    )
    create = token.add_parser("create", parents=[common], help="print a new join token")
    create.add_argument("--uses", type=int, default=1, help="how many peers may join with it")
    create.add_argument("--expires", default="24h", help="lifetime such as 30m, 24h, 7d")
    create.add_argument("--label", default="", help="what the token is for (token list shows it)")
    create.add_argument(
        "--allow-routes",
        default="",
        help="CIDRs peers joining with it may carry for the mesh (routes they ask for inside "
        "these are granted; others wait for `peer routes approve`), comma-separated",
    )
    listing = token.add_parser("list", parents=[common], help="list join tokens")
    listing.add_argument("--json", action="store_true")
    revoke = token.add_parser("revoke", parents=[common], help="revoke a join token")
    revoke.add_argument("token_id", metavar="ID", help="the id `token list` shows")

    info = commands.add_parser("info", parents=[common], help="what peers need to know")
    info.add_argument("--json", action="store_true")

    peer = commands.add_parser("peer", help="register or remove a peer by hand").add_subparsers(
        dest="peer_command", metavar="ACTION", required=True
    )
    add = peer.add_parser("add", parents=[common], help="register an existing WireGuard peer")
    add.add_argument("--public-key", help="its public key (wg pubkey)")
    add.add_argument(
        "--config",
        action="store_true",
        help="for a phone or box that cannot run the agent: make its key and print its "
        "wg-quick configuration (every peer through the relay), and a QR code on a terminal",
    )
    add.add_argument("--name", required=True, help="its name, a DNS label")
    add.add_argument("--routes", default="", help="CIDRs it routes to, comma-separated")
    remove = peer.add_parser("remove", parents=[common], help="remove a peer")
    remove.add_argument("peer", metavar="NAME|KEY")
    routes = peer.add_parser("routes", help="grant or revoke a peer's routes").add_subparsers(
        dest="routes_command", metavar="ACTION", required=True
    )
    approve = routes.add_parser(
        "approve", parents=[common], help="grant routes (default: all it asked for)"
    )
    approve.add_argument("peer", metavar="NAME|KEY")
    approve.add_argument("routes", nargs="?", default=None, metavar="CIDR,...")
    revoke_routes = routes.add_parser("revoke", parents=[common], help="take routes away")
    revoke_routes.add_argument("peer", metavar="NAME|KEY")
    revoke_routes.add_argument("routes", metavar="CIDR,...")

    peers = commands.add_parser("peers", parents=[common], help="list registered peers")
    peers.add_argument("--json", action="store_true")

    commands.add_parser(
        "health", parents=[common], help="exit 0 if the serving rendezvous answers /healthz"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 with a one-line error on a bad flag
    if args.command is None:
        parser.print_help(sys.stdout)
        return 0
    try:
        return asyncio.run(_command(args))
    except UsageError as error:
        return report(PROG, error, USAGE_ERROR)
    except Failure as error:
        return report(PROG, error, FAILURE)
    except KeyboardInterrupt:
        return 130


async def _command(args: argparse.Namespace) -> int:
    data_dir: Path = args.data_dir or config.default_data_dir()
    if args.command == "serve":
        return await _serve(args, data_dir)
    action = _ACTIONS[_action_name(args)]
    database = engines.database_from(args.database)
    registry = await Registry.open(data_dir, served=True, database=database)
    try:
        await action(registry, args)
    finally:
        await registry.close()
    return 0


def _action_name(args: argparse.Namespace) -> tuple[str, str | None]:
    action = getattr(args, f"{args.command}_command", None)
    if action == "routes":
        return ("peer routes", args.routes_command)
    return (args.command, action)


async def _serve(args: argparse.Namespace, data_dir: Path) -> int:
    configure_logging(args.log_level)
    flags = config.from_mapping(
        {name: getattr(args, name) for name in (*_SERVE_FLAGS, "behind_tls_proxy")}
    )
    given = config.merge(flags, config.from_environment())
    database = engines.database_from(args.database)
    service = Rendezvous(await Registry.open(data_dir, given, store=False, database=database))
    try:
        await service.start()
        same_database = " and the same --database" if database else ""
        print(
            f"make a join token with: {PROG} token create --data-dir {data_dir}{same_database}",
            file=sys.stderr,
            flush=True,
        )
        await _until_signalled()
    finally:
        await service.stop()
    return 0


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()


# -- administration ---------------------------------------------------------------------------


async def _token_create(registry: Registry, args: argparse.Namespace) -> None:
    settings = registry.settings
    allowed = parse_routes(args.allow_routes, settings.network, settings.own_addresses)
    label = parse_label(args.label)
    lifetime = parse_duration(args.expires)
    token = await registry.create_token(args.uses, lifetime, allowed, label=label)
    print(token)
    token_id = tokens.token_id(tokens.decode(token).secret_hash)
    expires = time.strftime("%Y-%m-%d %H:%M", time.localtime(time.time() + lifetime))
    note = f" ({label})" if label else ""
    print(
        f"token {token_id}{note}: {args.uses} use(s), expires {expires}; "
        f"`{PROG} token revoke {token_id}` cancels it",
        file=sys.stderr,
    )


async def _token_list(registry: Registry, args: argparse.Namespace) -> None:
    listed = await registry.list_tokens()
    if args.json:
        print(json.dumps([token.to_json() for token in listed], indent=2))
        return
    now = time.time()
    rows = [["ID", "LABEL", "USES LEFT", "EXPIRES", "STATE"]]
    for token in listed:
        state = "revoked" if token.revoked else "expired" if token.expires_at <= now else "valid"
        expires = time.strftime("%Y-%m-%d %H:%M", time.localtime(token.expires_at))
        rows.append([token.token_id, token.label or "-", str(token.uses_left), expires, state])
    print_table(rows)


async def _token_revoke(registry: Registry, args: argparse.Namespace) -> None:
    await registry.revoke_token(args.token_id)
    print(f"revoked {args.token_id}")


async def _info(registry: Registry, args: argparse.Namespace) -> None:
    settings = registry.settings
    facts = {
        "public_key": encode_key(registry.public_key),
        "endpoint": format_endpoint(settings.public_endpoint),
        "zone": settings.zone,
        "network": str(settings.network),
        "dns": format_endpoint(settings.dns_address),
        "api_url": settings.public_api_url,
        "address": str(settings.rendezvous_address),
        "tls_pin": registry.tls_pin,
        "admin_token_file": str(registry.data_dir / ADMIN_TOKEN_NAME),
    }
    if args.json:
        print(json.dumps(facts, indent=2))
    else:
        print_table([[key.replace("_", " "), str(value)] for key, value in facts.items()])


async def _health(registry: Registry, args: argparse.Namespace) -> None:
    # The container's health check: asks the API the running `serve` listens on (as stored in
    # the data folder), on loopback when it listens on every address.
    host, port = registry.settings.api_listen
    with contextlib.suppress(ValueError):  # a host name stays as it is
        if ipaddress.ip_address(host).is_unspecified:
            host = "::1" if ipaddress.ip_address(host).version == 6 else "127.0.0.1"
    scheme = "http" if registry.settings.behind_tls_proxy else "https"
    url = f"{scheme}://{format_endpoint((host, port))}/healthz"
    pinned = PinnedKey(registry.tls_pin) if registry.tls_pin else False
    try:
        timeout = aiohttp.ClientTimeout(total=HEALTH_TIMEOUT_S)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(url, ssl=pinned) as answer,
        ):
            body = await answer.json()
    except (aiohttp.ClientError, TimeoutError, ValueError) as error:
        raise Failure(f"{url} did not answer: {error or type(error).__name__}") from None
    if answer.status != 200 or not isinstance(body, dict) or body.get("status") != "ok":
        raise Failure(f"{url} answered {answer.status} without status ok")
    print(f"ok: {body.get('peers', 0)} peers")


Action = Callable[[Registry, argparse.Namespace], Awaitable[None]]
_ACTIONS: dict[tuple[str, str | None], Action] = {
    ("token", "create"): _token_create,
    ("token", "list"): _token_list,
    ("token", "revoke"): _token_revoke,
    ("info", None): _info,
    ("peer", "add"): peercommands.peer_add,
    ("peer", "remove"): peercommands.peer_remove,
    ("peer routes", "approve"): peercommands.routes_approve,
    ("peer routes", "revoke"): peercommands.routes_revoke,
    ("peers", None): peercommands.peers,
    ("health", None): _health,
}


if __name__ == "__main__":
    sys.exit(main())
