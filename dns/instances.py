"""A DNS-SD instance read back from its records, as the agent (or any wgsd client) does.

Everything here comes from DNS answers nobody authenticated: only `BadRecord` escapes, and the
key comes from the instance label and must agree with `pub=`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

import dns.name

from meshpeer.common.endpoints import Endpoint
from meshpeer.common.errors import InvalidInput
from meshpeer.common.keys import parse_key

from .naming import BadLabel, key_from_label


class BadRecord(ValueError):
    """Records that do not describe a peer the way this module writes them."""


@dataclass(frozen=True, slots=True)
class DiscoveredPeer:
    public_key: bytes
    endpoint: Endpoint
    allowed: tuple[str, ...]
    name: str | None
    address: str | None


def decode_instance(
    instance: dns.name.Name,
    port: int,
    endpoint_address: str,
    txt: Sequence[bytes],
) -> DiscoveredPeer:
    """A peer from its SRV port, A/AAAA and TXT strings; only `BadRecord` escapes.

    The key comes from the instance label and must agree with `pub=`: a TXT record cannot
    redirect one peer's endpoint to another's key."""
    if len(instance.labels) < 1:
        raise BadRecord("the instance name has no label")
    try:
        key = key_from_label(instance.labels[0])
        address = str(ipaddress.ip_address(endpoint_address))
    except (BadLabel, ValueError) as error:
        raise BadRecord(str(error)) from None
    if not 0 < port < 65536:
        raise BadRecord(f"port {port} is out of range")
    values = parse_txt(txt)
    if values.get("pub") and _b64(values["pub"]) != key:
        raise BadRecord("pub= does not match the instance label")
    allowed = tuple(cidr for cidr in values.get("allowed", "").split(",") if cidr)
    return DiscoveredPeer(key, (address, port), allowed, values.get("name"), values.get("address"))


def parse_txt(strings: Sequence[bytes]) -> dict[str, str]:
    """key=value strings (RFC 6763 section 6); repeated `allowed=` strings are joined."""
    values: dict[str, str] = {}
    for raw in strings:
        text = raw.decode("utf-8", "replace")
        key, _, value = text.partition("=")
        key = key.lower()
        if key == "allowed" and key in values:
            values[key] = ",".join(part for part in (values[key], value) if part)
        else:
            values.setdefault(key, value)  # RFC 6763 6.4: the first occurrence counts
    return values


def _b64(text: str) -> bytes | None:
    try:
        return parse_key(text)
    except InvalidInput:
        return None
