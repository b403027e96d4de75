"""WireGuard public keys: 32 bytes (Curve25519), written as 44 characters of base64 as `wg`
prints them. The one definition of both, for the rendezvous, the agent and the DNS names."""

from __future__ import annotations

import base64
import binascii

from .errors import InvalidInput

KEY_SIZE = 32
KEY_TEXT_LENGTH = 44  # base64 of 32 bytes, with its one '=' of padding


def encode_key(key: bytes) -> str:
    return base64.b64encode(key).decode()


def parse_key(text: object, what: str = "public key") -> bytes:
    """The key `text` writes; InvalidInput for anything but 44 characters of strict base64."""
    if not isinstance(text, str) or len(text) != KEY_TEXT_LENGTH:
        raise InvalidInput(f"{what} must be 44 characters of base64 (as `wg pubkey` prints)")
    try:
        key = base64.b64decode(text, validate=True)
    except binascii.Error:
        raise InvalidInput(f"{what} is not valid base64: {text!r}") from None
    if len(key) != KEY_SIZE:
        raise InvalidInput(f"{what} must decode to {KEY_SIZE} bytes")
    return key


def short_key(key: bytes) -> str:
    """The first characters of the key's text, enough to tell peers apart in a log line."""
    return encode_key(key)[:8] + "..."
