"""Command line of the agent (``meshpeer``): run, status, down."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from meshpeer.common.console import (
    FAILURE,
    USAGE_ERROR,
    OneLineParser,
    PrintVersion,
    configure_logging,
    report,
)
from meshpeer.common.errors import Failure, UsageError
from meshpeer.dns.naming import parse_name

from . import client
from .agent import Agent, Options
from .errors import AgentError
from .links import Links
from .prechecks import check_interface_name
from .state import DEFAULT_STATE_DIR, StateDir, is_running_agent
from .timers import DNS_SD_POLL_S, DOWN_POLL_S, DOWN_WAIT_S

PROG = "meshpeer"
INTERRUPTED = 130  # 128 + SIGINT, as shells report it


class DownFailed(Failure):
    """`down` could not verify that the agent stopped and its interface went (exit 1)."""


class LeaveFailed(Failure):
    """The rendezvous could not be told (exit 1): the machine is still a member."""


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=PROG,
        description=(
            "The meshpeer agent: joins the mesh through the rendezvous, drives the WireGuard "
            "interface and punches through NATs to every other peer."
        ),
    )
    parser.add_argument("--version", action=PrintVersion)
    common = OneLineParser(add_help=False)
    common.add_argument(
        "--state-dir",
        type=Path,
        default=Path(os.environ.get("MESHPEER_STATE_DIR", DEFAULT_STATE_DIR)),
        help=f"where the key and membership live (default {DEFAULT_STATE_DIR})",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = commands.add_parser("run", parents=[common], help="join (once) and keep the mesh up")
    run.add_argument(
        "--token",
        default=os.environ.get("MESHPEER_TOKEN") or None,
        help="join token from `rendezvous token create` (first run; env MESHPEER_TOKEN; "
        "prefer the variable or --token-file: arguments show in `ps`)",
    )
    run.add_argument(
        "--token-file", type=Path, help="read the join token from this file (first run)"
    )
    run.add_argument("--interface", default="wg0", help="WireGuard interface name (default wg0)")
    run.add_argument("--listen-port", type=int, default=51820, help="UDP port (default 51820)")
    run.add_argument("--backend", choices=["auto", "kernel", "userspace"], default="auto")
    run.add_argument("--name", help="this peer's name, a DNS label (default: the host name)")
    run.add_argument(
        "--advertise-routes",
        default="",
        help="CIDRs behind this peer, comma-separated (turns on IP forwarding for the host)",
    )
    run.add_argument(
        "--accept-routes",
        action="store_true",
        help="install the routes other peers advertise (off: only their mesh addresses)",
    )
    run.add_argument(
        "--dns-sd-interval",
        type=float,
        default=DNS_SD_POLL_S,
        metavar="SECONDS",
        help=(
            f"seconds between DNS-SD reads while the watch fails and a path is down "
            f"(default {DNS_SD_POLL_S:g}; the lab shortens it)"
        ),
    )
    run.add_argument(
        "--force",
        action="store_true",
        help="join with a token of another rendezvous although this machine is in a mesh",
    )
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    status = commands.add_parser("status", parents=[common], help="the peers and their paths")
    status.add_argument("--json", action="store_true")
    down = commands.add_parser("down", parents=[common], help="stop `run` and remove its interface")
    down.add_argument(
        "--interface", help="the interface to remove when no agent runs (default: the last one)"
    )
    commands.add_parser(
        "leave", parents=[common], help="stop `run` and take this machine out of its mesh"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 with a one-line error on a bad flag
    if args.command is None:
        parser.print_help(sys.stdout)
        return 0
    try:
        return _command(args)
    except UsageError as error:
        return report(PROG, error, USAGE_ERROR)
    except Failure as error:
        return report(PROG, error, FAILURE)
    except KeyboardInterrupt:  # Ctrl-C before the agent's own handlers were in place
        return INTERRUPTED


def _command(args: argparse.Namespace) -> int:
    try:
        if args.command == "run":
            check_interface_name(args.interface)
            return _run(args)
        if args.command == "status":
            return _status(args)
        if args.command == "leave":
            return _leave(args)
        return _down(args)
    except PermissionError as error:
        raise UsageError(f"{error.strerror}: meshpeer needs root (CAP_NET_ADMIN)") from None


def _run(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        raise AgentError("meshpeer run needs root (CAP_NET_ADMIN) to make the interface")
    if not 0 < args.listen_port < 65536:
        raise AgentError("--listen-port must be between 1 and 65535")
    if not 0 < args.dns_sd_interval <= 86400:
        raise AgentError("--dns-sd-interval must be between 0 and 86400 seconds")
    options = Options(
        state_dir=args.state_dir,
        token=_token(args),
        interface=args.interface,
        listen_port=args.listen_port,
        backend=args.backend,
        name=parse_name(args.name) if args.name else None,
        routes=_routes(args.advertise_routes),
        dns_sd_poll_s=args.dns_sd_interval,
        accept_routes=args.accept_routes,
        force=args.force,
    )
    configure_logging(args.log_level)
    return asyncio.run(_serve(Agent(options)))


async def _serve(agent: Agent) -> int:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, agent.stop)
    await agent.run()
    return agent.exit_code


def _token(args: argparse.Namespace) -> str | None:
    if args.token_file is None:
        return str(args.token).strip() if args.token else None
    try:
        return str(args.token_file.read_text()).strip()
    except OSError as error:
        raise AgentError(f"cannot read --token-file {args.token_file}: {error.strerror}") from None


def _routes(text: str) -> tuple[str, ...]:
    routes = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        try:
            routes.append(str(ipaddress.ip_network(item)))
        except ValueError:
            raise AgentError(
                f"--advertise-routes: {item!r} is not a CIDR such as 192.168.1.0/24"
            ) from None
    return tuple(routes)


def _status(args: argparse.Namespace) -> int:
    status = StateDir(args.state_dir).read_status()
    if status is None or not is_running_agent(status):
        raise AgentError(f"meshpeer is not running with state in {args.state_dir}")
    if args.json:
        print(json.dumps(_contract(status), indent=2))
        return 0
    now = time.time()
    print(
        f"{status['name']}  {status['address']}  {status['interface']} ({status['backend']})"
        f"  seen by the rendezvous at {status.get('endpoint') or '-'}"
    )
    print(_rendezvous_line(status.get("rendezvous") or {}, now))
    rows = [["PEER", "ADDRESS", "STATE", "PATH", "ENDPOINT", "LAST SEEN", "RX", "TX"]]
    for peer in status["peers"]:
        rows.append(
            [
                peer["name"],
                peer["address"],
                "online" if peer.get("online") else "offline",
                peer["path"],
                peer["endpoint"] or "-",
                _ago(peer.get("last_seen"), now),
                _size(peer.get("rx_bytes", 0)),
                _size(peer.get("tx_bytes", 0)),
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    return 0


def _rendezvous_line(rendezvous: dict[str, Any], now: float) -> str:
    since = rendezvous.get("since")
    how_long = f" for {_ago(since, now).removesuffix(' ago')}" if since else ""
    state = "answers" if rendezvous.get("answering") else "does not answer"
    others = rendezvous.get("others")
    listed = [str(url) for url in others] if isinstance(others, list) else []
    also = f"; it lists as live too: {', '.join(listed)}" if listed else ""
    return f"rendezvous {rendezvous.get('url', '?')} {state}{how_long}{also}"


def _ago(moment: object, now: float) -> str:
    if not isinstance(moment, int | float) or not moment:
        return "never"
    seconds = max(0, int(now - moment))
    if seconds < 120:
        return f"{seconds}s ago"
    return f"{seconds // 60}m ago" if seconds < 7200 else f"{seconds // 3600}h ago"


def _size(count: object) -> str:
    value = float(count) if isinstance(count, int | float) else 0.0
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def _contract(status: dict[str, Any]) -> dict[str, Any]:
    """DESIGN.md's keys first; the rest as extras."""
    return {"public_key": status["public_key"], "address": status["address"], **status}


def _down(args: argparse.Namespace) -> int:
    """Stop `run` and remove its interface; say only what was checked to be true."""
    state = StateDir(args.state_dir)
    status = state.read_status()
    if status and is_running_agent(status):
        pid, interface = int(status["pid"]), str(status["interface"])
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + DOWN_WAIT_S
        while is_running_agent(status) and time.monotonic() < deadline:
            time.sleep(DOWN_POLL_S)
        if is_running_agent(status):
            raise DownFailed(
                f"meshpeer (pid {pid}) is still running {DOWN_WAIT_S:.0f} s after SIGTERM"
            )
        if Links().index(interface) is not None:
            raise DownFailed(f"meshpeer (pid {pid}) stopped, but {interface} is still there")
        print(f"stopped meshpeer (pid {pid}); {interface} removed")
        return 0
    interface = args.interface or (status["interface"] if status else "wg0")
    links = Links()
    removed = links.is_ours(interface)
    if removed:
        links.delete(interface)
    if status is not None:  # it was running and is gone: it died (SIGKILL, a crash)
        state.forget_status()
        left = f"; removed the {interface} it left" if removed else ""
        raise DownFailed(
            f"meshpeer (pid {status.get('pid')}) had stopped without cleaning up{left}"
        )
    print(f"removed {interface}" if removed else "nothing to do: meshpeer is not running")
    return 0


def _leave(args: argparse.Namespace) -> int:
    """Stop the agent if it runs, then DELETE /v1/self; the key stays, the membership goes."""
    state = StateDir(args.state_dir)
    membership = state.membership()
    if membership is None:
        raise AgentError(f"{args.state_dir} holds no membership: this machine is in no mesh")
    status = state.read_status()
    if status and is_running_agent(status):
        _down(argparse.Namespace(state_dir=args.state_dir, interface=None))
    try:
        asyncio.run(client.leave(membership))
    except client.Unreachable as error:
        raise LeaveFailed(f"{error}; still in the mesh: try again") from None
    state.forget_membership()
    print(f"left the mesh of {membership.api_url} ({membership.name}, {membership.address})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
