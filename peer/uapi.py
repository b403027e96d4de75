"""The cross-platform WireGuard configuration protocol (UAPI), as bytes in and bytes out.

wireguard-go and boringtun listen on `/run/wireguard/<interface>.sock`. A `get=1` answers with
`key=value` lines; a `set=1` takes them (shared/reference/wireguard-protocol.md). Keys travel
as lower-case hex. `parse_get` reads hostile bytes: only `UapiError` escapes.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace

from meshpeer.common.endpoints import (
    Endpoint,
    checked_endpoint,
    format_endpoint,
    ip_literal,
    parse_endpoint,
)
from meshpeer.common.errors import Failure, InvalidInput

MAX_REPLY_BYTES = 16 * 1024 * 1024  # 100,000 peers fit with room to spare
MAX_KEEPALIVE_S = 65535  # UAPI takes a u16


class UapiError(Failure):
    """A reply that is not UAPI, or an errno the device returned."""


@dataclass(frozen=True, slots=True)
class PeerConfig:
    """What we want a peer to be: the whole truth, applied with replace_allowed_ips."""

    public_key: bytes
    allowed_ips: tuple[str, ...]
    endpoint: Endpoint | None = None
    keepalive_s: int = 0
    # Send a keepalive now. WireGuard (kernel and wireguard-go) sends one at once only when the
    # keepalive interval goes from 0 to non-zero, so a kick sets 0 and then the interval.
    kick: bool = False


@dataclass(slots=True)
class PeerStatus:
    public_key: bytes
    endpoint: Endpoint | None = None
    allowed_ips: list[str] = field(default_factory=list)
    latest_handshake: float | None = None  # unix seconds; None: never
    keepalive_s: int = 0
    rx_bytes: int = 0
    tx_bytes: int = 0


@dataclass(slots=True)
class DeviceStatus:
    listen_port: int = 0
    has_private_key: bool = False
    peers: dict[bytes, PeerStatus] = field(default_factory=dict)


def set_device(private_key: bytes, listen_port: int) -> bytes:
    return _request([f"private_key={private_key.hex()}", f"listen_port={listen_port}"])


def set_peers(peers: list[PeerConfig], remove: list[bytes]) -> bytes:
    """The set request; UapiError for any value that is not what its line says (see checked)."""
    lines: list[str] = []
    for key in remove:
        lines += [f"public_key={_checked_key(key).hex()}", "remove=true"]
    for peer in map(checked, peers):
        lines += [f"public_key={peer.public_key.hex()}", "replace_allowed_ips=true"]
        lines += [f"allowed_ip={cidr}" for cidr in peer.allowed_ips]
        if peer.endpoint is not None:
            lines.append(f"endpoint={format_endpoint(peer.endpoint)}")
        if peer.kick and peer.keepalive_s:
            lines.append("persistent_keepalive_interval=0")
        lines.append(f"persistent_keepalive_interval={peer.keepalive_s}")
    return _request(lines)


def checked(peer: PeerConfig) -> PeerConfig:
    """The peer with every value in canonical form, or UapiError.

    The last line of defence for both backends: whatever a discovery source or a bug lets
    through, no value can start a line of its own (a newline in `allowed_ip=` once wrote
    `remove=true` for the rendezvous) or mean something other than its key says."""
    if not 0 <= peer.keepalive_s <= MAX_KEEPALIVE_S:
        raise UapiError(f"keepalive {peer.keepalive_s!r} is out of range")
    try:
        endpoint = None if peer.endpoint is None else checked_endpoint(peer.endpoint)
    except InvalidInput as error:
        raise UapiError(str(error)) from None
    allowed_ips = tuple(map(checked_cidr, peer.allowed_ips))
    return replace(
        peer, public_key=_checked_key(peer.public_key), allowed_ips=allowed_ips, endpoint=endpoint
    )


def checked_cidr(text: str) -> str:
    """ADDRESS/PREFIX, canonical; a bare address is refused (UAPI wants a prefix)."""
    address, sep, prefix = text.partition("/")
    if not sep or not prefix.isdigit() or not prefix.isascii() or len(prefix) > 3:
        raise UapiError(f"allowed ip {text[:60]!r} is not a CIDR")
    try:
        return str(ipaddress.ip_interface(f"{ip_literal(address)}/{int(prefix)}"))
    except ValueError:  # InvalidInput too
        raise UapiError(f"allowed ip {text[:60]!r} is not a CIDR") from None


def _checked_key(key: bytes) -> bytes:
    if type(key) is not bytes or len(key) != 32:
        raise UapiError("a public key has 32 bytes")
    return key


def get_request() -> bytes:
    return b"get=1\n\n"


def _request(lines: list[str]) -> bytes:
    return ("set=1\n" + "".join(line + "\n" for line in lines) + "\n").encode()


def check_errno(reply: bytes) -> None:
    """A set's reply is `errno=N`; anything but 0 is the device refusing."""
    values = _lines(reply)
    if not values or values[-1][0] != "errno":
        raise UapiError("the device's reply has no errno")
    if values[-1][1] != "0":
        raise UapiError(f"the device refused the configuration (errno={values[-1][1]})")


def parse_get(reply: bytes) -> DeviceStatus:
    device = DeviceStatus()
    peer: PeerStatus | None = None
    seconds = nanoseconds = 0
    for key, value in _lines(reply):
        if key == "public_key":
            _finish(peer, seconds, nanoseconds)
            peer, seconds, nanoseconds = PeerStatus(_hex_key(value)), 0, 0
            device.peers[peer.public_key] = peer
        elif key == "errno":
            if value != "0":
                raise UapiError(f"the device refused the request (errno={value})")
        elif peer is None:
            _device_field(device, key, value)
        elif key == "last_handshake_time_sec":
            seconds = _number(value)
        elif key == "last_handshake_time_nsec":
            nanoseconds = _number(value)
        else:
            _peer_field(peer, key, value)
    _finish(peer, seconds, nanoseconds)
    return device


def _device_field(device: DeviceStatus, key: str, value: str) -> None:
    if key == "listen_port":
        device.listen_port = _number(value)
    elif key == "private_key":
        device.has_private_key = any(character != "0" for character in value)


def _peer_field(peer: PeerStatus, key: str, value: str) -> None:
    if key == "endpoint":
        try:
            peer.endpoint = parse_endpoint(value)
        except InvalidInput as error:
            raise UapiError(str(error)) from None
    elif key == "allowed_ip":
        try:
            peer.allowed_ips.append(str(ipaddress.ip_network(value, strict=False)))
        except ValueError:
            raise UapiError(f"allowed_ip {value!r} is not a CIDR") from None
    elif key == "persistent_keepalive_interval":
        peer.keepalive_s = _number(value)
    elif key == "rx_bytes":
        peer.rx_bytes = _number(value)
    elif key == "tx_bytes":
        peer.tx_bytes = _number(value)


def _finish(peer: PeerStatus | None, seconds: int, nanoseconds: int) -> None:
    if peer is not None and seconds:
        peer.latest_handshake = seconds + nanoseconds / 1e9


def _lines(reply: bytes) -> list[tuple[str, str]]:
    if len(reply) > MAX_REPLY_BYTES:
        raise UapiError("the device's reply is too long")
    try:
        text = reply.decode("ascii")
    except UnicodeDecodeError:
        raise UapiError("the device's reply is not ASCII") from None
    pairs: list[tuple[str, str]] = []
    for line in text.split("\n"):
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise UapiError(f"the device's reply has a line without '=': {line[:40]!r}")
        pairs.append((key, value))
    return pairs


def _hex_key(value: str) -> bytes:
    try:
        key = bytes.fromhex(value)
    except ValueError:
        raise UapiError("a public key in the reply is not hex") from None
    if len(key) != 32:
        raise UapiError("a public key in the reply is not 32 bytes")
    return key


def _number(value: str) -> int:
    if not value.isdigit() or len(value) > 20:
        raise UapiError(f"{value[:30]!r} is not a number")
    return int(value)
