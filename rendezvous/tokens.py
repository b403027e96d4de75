"""Join tokens: one opaque string that carries all a new peer needs.

`mp1_<base64url(JSON)>` with the API URL, a 256-bit secret and the rendezvous public key, so
`meshpeer run --token T` needs nothing else, and can check that the rendezvous it reaches holds
the key the operator meant. The registry stores only SHA-256 of the secret: a leaked database
cannot be turned back into working tokens. (A slow hash buys nothing against 256 random bits.)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import secrets
from dataclasses import dataclass

from .model import InvalidInput, encode_key, parse_key

PREFIX = "mp1_"
MAX_TOKEN_CHARS = 2048
SECRET_BYTES = 32


@dataclass(frozen=True, slots=True)
class JoinToken:
    api_url: str
    secret: bytes
    rendezvous_key: bytes

    def encode(self) -> str:
        payload = {
            "api": self.api_url,
            "secret": _b64url(self.secret),
            "key": encode_key(self.rendezvous_key),
        }
        compact = json.dumps(payload, separators=(",", ":")).encode()
        return PREFIX + _b64url(compact)

    @property
    def secret_hash(self) -> bytes:
        return hash_secret(self.secret)


def new_secret() -> bytes:
    return secrets.token_bytes(SECRET_BYTES)


def hash_secret(secret: bytes) -> bytes:
    return hashlib.sha256(secret).digest()


def token_id(secret_hash: bytes) -> str:
    """A short public handle for listing and revoking; it reveals nothing of the secret."""
    return secret_hash[:6].hex()


def decode(text: object) -> JoinToken:
    """Parse a token from a user or a peer; only `InvalidInput` escapes."""
    if not isinstance(text, str) or len(text) > MAX_TOKEN_CHARS or not text.startswith(PREFIX):
        raise InvalidInput(f"a join token starts with {PREFIX}; copy it whole from `token create`")
    try:
        payload = json.loads(_unb64url(text[len(PREFIX) :].strip()))
        api_url, secret, key = payload["api"], _unb64url(payload["secret"]), payload["key"]
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise InvalidInput("the join token is damaged; copy it whole from `token create`") from None
    if not isinstance(api_url, str) or len(secret) != SECRET_BYTES:
        raise InvalidInput("the join token is damaged; copy it whole from `token create`")
    return JoinToken(api_url, secret, parse_key(key, "the token's rendezvous key"))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64url(text: object) -> bytes:
    if not isinstance(text, str):
        raise TypeError("not text")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
