"""UDP endpoints and IP addresses as both sides write and read them.

"Address" in meshpeer means a mesh address (a peer's IP inside the mesh); an `Endpoint` is where
a WireGuard socket is reached (IP, port). Text from the network goes through `parse_endpoint`
and `ip_literal` only: hex digits, dots and colons, checked before `ipaddress` sees them, since
`ipaddress` alone takes an IPv6 scope id of any characters, newlines included
('fe80::1%<newline>remove=true'), and never a host name (which a library might resolve).
"""

from __future__ import annotations

import ipaddress

from .errors import InvalidInput
from .limits import MAX_LAN_ENDPOINTS

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Endpoint = tuple[str, int]  # (IP literal in canonical form, UDP port)

MAX_PORT = 65535
_ADDRESS_CHARACTERS = frozenset("0123456789abcdefABCDEF.:")


def ip_literal(text: str) -> str:
    """The IP address `text` is, in canonical form, or InvalidInput."""
    if not text or not _ADDRESS_CHARACTERS.issuperset(text):
        raise InvalidInput(f"{text[:60]!r} is not an IP address")
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise InvalidInput(f"{text[:60]!r} is not an IP address") from None


def parse_endpoint(text: str, what: str = "endpoint") -> Endpoint:
    """IP:PORT or [IPv6]:PORT, as WireGuard and the API write them; InvalidInput otherwise."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isascii() or not port.isdigit() or not 0 < int(port) <= MAX_PORT:
        raise InvalidInput(f"{what} {text[:60]!r} is not IP:PORT")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return ip_literal(host), int(port)


def checked_endpoint(endpoint: Endpoint) -> Endpoint:
    """An endpoint made in code, checked as strictly as one parsed from text."""
    host, port = endpoint
    if type(port) is not int or not 0 < port <= MAX_PORT:
        raise InvalidInput(f"port {port!r} is out of range")
    return ip_literal(host), port


def format_endpoint(endpoint: Endpoint) -> str:
    host, port = endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_host_port(text: str, what: str) -> Endpoint:
    """HOST:PORT or [V6]:PORT where HOST may be a name, as the serve flags take them."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not host:
        raise InvalidInput(f"{what} {text!r} must be HOST:PORT, e.g. 0.0.0.0:51820")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not port_text.isascii() or not port_text.isdigit() or not 0 < int(port_text) <= MAX_PORT:
        raise InvalidInput(f"{what} {text!r} needs a port between 1 and 65535")
    return host, int(port_text)


def host_of(text: str) -> str:
    """The host part of HOST:PORT or [V6]:PORT text (a stored endpoint or DNS address)."""
    host = text.rpartition(":")[0]
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def unmap_address(host: str) -> str:
    """`::ffff:192.0.2.1` (a dual-stack socket's view of IPv4) is just 192.0.2.1."""
    if host.startswith("::ffff:") and "." in host:
        return host[len("::ffff:") :]
    return host


def lan_endpoints(items: object) -> tuple[Endpoint, ...]:
    """The LAN endpoints a peer reports of itself (PUT /v1/lan): a list of at most
    MAX_LAN_ENDPOINTS `IP:PORT` texts, each kept once; InvalidInput otherwise. The rendezvous
    checks what it stores with this, and the agent what the API lists."""
    if not isinstance(items, list) or len(items) > MAX_LAN_ENDPOINTS:
        raise InvalidInput(f"LAN endpoints must be a list of at most {MAX_LAN_ENDPOINTS}")
    return tuple(dict.fromkeys(lan_endpoint(item) for item in items))


def lan_endpoint(text: object) -> Endpoint:
    """One LAN endpoint: IPv4 (mDNS announces IPv4 here), an address another host can send
    to; never loopback, link-local, multicast, 0/8 or 240/4, where a WireGuard endpoint would
    send a peer's traffic back into its own host or nowhere."""
    if not isinstance(text, str):
        raise InvalidInput("a LAN endpoint must be text such as 192.168.1.5:51820")
    host, port = parse_endpoint(text, "LAN endpoint")
    address = ipaddress.ip_address(host)
    if address.version != 4 or not unicast(address):
        raise InvalidInput(f"LAN endpoint {text[:60]!r} is not a unicast IPv4 address")
    return host, port


def unicast(address: IPAddress) -> bool:
    """An address a remote peer can have: not loopback, multicast, link-local, 0/8, 240/4."""
    return not (
        address.is_loopback
        or address.is_multicast
        or address.is_link_local
        or address.is_unspecified
        or address.is_reserved
        or (address.version == 4 and address in _THIS_NETWORK)
    )


_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")  # RFC 1122 3.2.1.3: not a destination
