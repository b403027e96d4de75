"""Join tokens: one opaque string that carries all a new peer needs.

`mp2_<base64url(JSON)>` with the API URL, a 256-bit secret, the rendezvous's WireGuard public
key and the pin of its API certificate (`sha256:` of the key in it), so `meshpeer run --token T`
needs nothing else and talks to no one but the rendezvous the operator meant: the TLS session is
checked against the pin before the token's secret is sent. A token without a pin is for an API
behind a TLS proxy, whose certificate the system's CAs vouch for. The registry stores only
SHA-256 of the secret: a leaked database cannot be turned back into working tokens. (A slow hash
buys nothing against 256 random bits.)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import secrets
from dataclasses import dataclass

from meshpeer.common.errors import InvalidInput
from meshpeer.common.keys import encode_key, parse_key
from meshpeer.common.pinning import parse_pin

PREFIX = "mp2_"
PLAIN_HTTP_PREFIX = "mp1_"  # tokens from before the API spoke TLS
MAX_TOKEN_CHARS = 2048
SECRET_BYTES = 32


@dataclass(frozen=True, slots=True)
class JoinToken:
    api_url: str
    secret: bytes
    rendezvous_key: bytes
    tls_pin: str | None  # None: the API is behind a TLS proxy with a CA-signed certificate

    def encode(self) -> str:
        payload = {
            "api": self.api_url,
            "secret": _b64url(self.secret),
            "key": encode_key(self.rendezvous_key),
        }
        if self.tls_pin is not None:
            payload["tls"] = self.tls_pin
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
    text = text.strip() if isinstance(text, str) else text
    if isinstance(text, str) and text.startswith(PLAIN_HTTP_PREFIX):
        raise InvalidInput(
            f"this token ({PLAIN_HTTP_PREFIX}...) is from before the API used TLS; "
            "make a new one with `rendezvous token create`"
        )
    if not isinstance(text, str) or len(text) > MAX_TOKEN_CHARS or not text.startswith(PREFIX):
        raise InvalidInput(f"a join token starts with {PREFIX}; copy it whole from `token create`")
    try:
        payload = json.loads(_unb64url(text[len(PREFIX) :]))
        api_url, secret, key = payload["api"], _unb64url(payload["secret"]), payload["key"]
        pin = payload.get("tls")
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error, RecursionError):
        raise InvalidInput("the join token is damaged; copy it whole from `token create`") from None
    if not isinstance(api_url, str) or len(secret) != SECRET_BYTES:
        raise InvalidInput("the join token is damaged; copy it whole from `token create`")
    if not api_url.startswith("https://"):
        raise InvalidInput("the join token's API URL is not https://; make a new token")
    if pin is not None:
        parse_pin(pin)
    return JoinToken(api_url, secret, parse_key(key, "the token's rendezvous key"), pin)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64url(text: object) -> bytes:
    if not isinstance(text, str):
        raise TypeError("not text")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
