"""What `meshpeer run` checks before it spends a token use: the interface name, the UDP port,
and that a joined machine does not silently switch to another mesh.

Each failure is a one-line AgentError (exit 2) that says what to do; nothing has been made yet.
"""

from __future__ import annotations

import errno
import re
import socket

from meshpeer.common.keys import encode_key
from meshpeer.common.tokens import JoinToken

from .errors import AgentError
from .state import Membership

# Linux: at most 15 bytes (IFNAMSIZ - 1); we take letters, digits and . _ - only.
_INTERFACE = re.compile(r"[A-Za-z0-9_.-]{1,15}")


def check_interface_name(name: str) -> None:
    if not _INTERFACE.fullmatch(name) or name in (".", ".."):
        raise AgentError(
            f"--interface {name!r} must be 1-15 letters, digits, '.', '_' or '-' (such as wg0)"
        )


def check_port_free(port: int) -> None:
    """The WireGuard port is ours to take, on IPv4 and IPv6 (wireguard-go binds both)."""
    for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):  # noqa: S104
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                if family == socket.AF_INET6:
                    probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise AgentError(
                    f"udp/{port} is taken (another WireGuard, such as wg-quick? `ss -ulpn` "
                    "shows it): choose another --listen-port"
                ) from None
            if error.errno != errno.EAFNOSUPPORT:  # no IPv6 here: nothing to take
                raise


def check_same_mesh(stored: Membership | None, token: JoinToken, force: bool) -> None:
    """A token of another rendezvous on a joined machine: leave the old mesh first, or say so."""
    if stored is None or force or stored.rendezvous_key == encode_key(token.rendezvous_key):
        return
    raise AgentError(
        f"this machine is in the mesh of {stored.api_url} and the token is for another "
        "rendezvous: run `meshpeer leave` first, or add --force to switch"
    )
