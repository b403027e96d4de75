"""DNS-SD naming shared by the rendezvous and the agent, exactly as wgsd names things.

This folder installs as ``meshpeer.dns`` and has no ``__init__.py`` on purpose: see pyproject.toml.
The service type follows wgsd's layout (``_wireguard._udp.<zone>``, RFC 6763 section 7); an
instance label is the RFC 4648 base32 of the peer's public key, padding included (56
characters), written in lower case and matched in any case.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import TYPE_CHECKING

from meshpeer.common.errors import InvalidInput
from meshpeer.common.keys import KEY_SIZE

if TYPE_CHECKING:
    import dns.name

SERVICE_LABELS: tuple[str, str] = ("_wireguard", "_udp")
ENUMERATION_LABELS: tuple[str, str, str] = ("_services", "_dns-sd", "_udp")  # RFC 6763 section 9
LABEL_LENGTH = 56
NAMESERVER_LABEL = "ns"
RENDEZVOUS_LABEL = "rendezvous"
RESERVED_NAMES = frozenset({NAMESERVER_LABEL, RENDEZVOUS_LABEL})
# A DNS label (RFC 1035 2.3.1, lower case): a peer's name is also `<name>.<zone>` in DNS-SD.
_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


class BadLabel(ValueError):
    """The label is not the base32 of a 32-byte key."""


# dnspython is imported by the functions that build its names, not above: the agent takes
# parse_name and key_from_label from here, and loads dnspython (~2.6 MiB) only to read DNS-SD.


def service_name(zone: dns.name.Name) -> dns.name.Name:
    import dns.name

    return dns.name.Name(SERVICE_LABELS).concatenate(zone)


def enumeration_name(zone: dns.name.Name) -> dns.name.Name:
    import dns.name

    return dns.name.Name(ENUMERATION_LABELS).concatenate(zone)


def instance_label(public_key: bytes) -> str:
    if len(public_key) != KEY_SIZE:
        raise ValueError(f"a WireGuard public key has {KEY_SIZE} bytes, not {len(public_key)}")
    return base64.b32encode(public_key).decode().lower()


def instance_name(public_key: bytes, zone: dns.name.Name) -> dns.name.Name:
    import dns.name

    return dns.name.Name((instance_label(public_key),)).concatenate(service_name(zone))


def key_from_label(label: str | bytes) -> bytes:
    """The public key an instance label names, whatever its case; only `BadLabel` escapes."""
    text = label.decode("ascii", "replace") if isinstance(label, bytes) else label
    if len(text) != LABEL_LENGTH:
        raise BadLabel(f"an instance label has {LABEL_LENGTH} characters, not {len(text)}")
    try:
        key = base64.b32decode(text.upper())
    except (binascii.Error, ValueError):
        raise BadLabel("an instance label is base32 (A-Z, 2-7, '=' padding)") from None
    if len(key) != KEY_SIZE:
        raise BadLabel("an instance label must decode to a 32-byte key")
    return key


def parse_name(text: object) -> str:
    if not isinstance(text, str) or not _NAME.fullmatch(text):
        raise InvalidInput(
            f"name {text!r} must be 1-63 lower-case letters, digits or '-', "
            "not starting or ending with '-' (it becomes a DNS label)"
        )
    if text in RESERVED_NAMES:
        raise InvalidInput(f"name {text!r} is reserved for the rendezvous's own DNS names")
    return text
