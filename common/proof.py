"""Joining proves possession of the private key, and the credential comes back sealed to it.

Public keys are public (DNS TXT, /v1/peers): a join that named a key would otherwise let anyone
with a token take over that peer. So the joiner MACs its request with a key only the two ends
can compute, X25519(peer private, rendezvous public) = X25519(rendezvous private, peer public),
stretched with HKDF-SHA256 (RFC 5869). The request carries a time in milliseconds that must grow
from one join of a key to the next (as WireGuard's TAI64N does), so a replayed join is refused.
The credential in the answer is sealed (ChaCha20-Poly1305) with the second half of the same
HKDF output: a proxy or a log in the path never holds a usable credential. Both sides use this
module; it does no I/O and reads no clock.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from meshpeer.common.errors import InvalidInput, UsageError
from meshpeer.common.keys import encode_key, parse_key
from meshpeer.common.limits import MAX_ROUTES

LABEL = b"meshpeer join v1"
NONCE_BYTES = 12
MAC_BYTES = 32
MAX_SEALED_BYTES = 512
MAX_TIME_MS = 2**53  # a JSON number every parser reads exactly


class ProofRejected(UsageError):
    """The join is not signed by the key it names, or replays an older one."""


@dataclass(frozen=True, slots=True)
class JoinKeys:
    mac: bytes
    seal: bytes


@dataclass(frozen=True, slots=True)
class JoinRequest:
    """A join as the peer sent it: routes as written, so both ends MAC the same bytes."""

    token: str
    public_key: bytes
    name: str
    routes: tuple[str, ...]
    time_ms: int
    mac: bytes

    def signed_bytes(self) -> bytes:
        fields = [self.token, encode_key(self.public_key), self.name, list(self.routes)]
        return LABEL + json.dumps([*fields, self.time_ms], separators=(",", ":")).encode()

    def to_json(self) -> dict[str, object]:
        return {
            "token": self.token,
            "public_key": encode_key(self.public_key),
            "name": self.name,
            "routes": list(self.routes),
            "time_ms": self.time_ms,
            "proof": base64.b64encode(self.mac).decode(),
        }


def derive(shared_secret: bytes, rendezvous_key: bytes, peer_key: bytes) -> JoinKeys:
    stretched = HKDF(
        algorithm=hashes.SHA256(), length=64, salt=LABEL, info=rendezvous_key + peer_key
    ).derive(shared_secret)
    return JoinKeys(stretched[:32], stretched[32:])


def peer_keys(private_key: X25519PrivateKey, rendezvous_key: bytes) -> JoinKeys:
    own = private_key.public_key().public_bytes_raw()
    shared = private_key.exchange(X25519PublicKey.from_public_bytes(rendezvous_key))
    return derive(shared, rendezvous_key, own)


def rendezvous_keys(private_key: X25519PrivateKey, peer_key: bytes) -> JoinKeys:
    own = private_key.public_key().public_bytes_raw()
    try:
        shared = private_key.exchange(X25519PublicKey.from_public_bytes(peer_key))
    except ValueError:  # a low-order point: no secret to share
        raise InvalidInput("that public key is not a usable X25519 key") from None
    return derive(shared, own, peer_key)


def sign_join(
    token: str,
    private_key: X25519PrivateKey,
    rendezvous_key: bytes,
    name: str,
    routes: tuple[str, ...],
    time_ms: int,
) -> JoinRequest:
    own = private_key.public_key().public_bytes_raw()
    unsigned = JoinRequest(token, own, name, routes, time_ms, b"")
    mac = hmac.digest(peer_keys(private_key, rendezvous_key).mac, unsigned.signed_bytes(), "sha256")
    return JoinRequest(token, own, name, routes, time_ms, mac)


def verify_join(request: JoinRequest, private_key: X25519PrivateKey) -> JoinKeys:
    keys = rendezvous_keys(private_key, request.public_key)
    expected = hmac.digest(keys.mac, request.signed_bytes(), "sha256")
    if not hmac.compare_digest(expected, request.mac):
        raise ProofRejected("the join is not signed by the private key of the public key it names")
    return keys


def parse_join(body: dict[str, object]) -> JoinRequest:
    """A join body from the network, bounded and typed; only InvalidInput escapes."""
    token, name = body.get("token"), body.get("name")
    routes, time_ms, proof = body.get("routes", []), body.get("time_ms"), body.get("proof")
    if not isinstance(token, str) or not isinstance(name, str):
        raise InvalidInput("token and name must be strings")
    if not isinstance(routes, list) or len(routes) > MAX_ROUTES:
        raise InvalidInput(f"routes must be a list of at most {MAX_ROUTES} CIDRs")
    if not all(isinstance(route, str) and len(route) <= 64 for route in routes):
        raise InvalidInput("routes must be a list of CIDRs such as 192.168.1.0/24")
    if not isinstance(time_ms, int) or isinstance(time_ms, bool) or not 0 < time_ms < MAX_TIME_MS:
        raise InvalidInput("time_ms must be the joiner's clock in milliseconds")
    mac = _b64(proof)
    if len(mac) != MAC_BYTES:
        raise InvalidInput("proof must be the base64 of a 32-byte HMAC-SHA256")
    key = parse_key(body.get("public_key"))
    return JoinRequest(token, key, name, tuple(routes), time_ms, mac)


def seal(keys: JoinKeys, peer_key: bytes, credential: str) -> str:
    nonce = os.urandom(NONCE_BYTES)
    sealed = ChaCha20Poly1305(keys.seal).encrypt(nonce, credential.encode(), peer_key)
    return base64.b64encode(nonce + sealed).decode()


def unseal(keys: JoinKeys, peer_key: bytes, text: object) -> str:
    """The credential from a join answer; ProofRejected when it was not sealed for us."""
    blob = _b64(text)
    if not NONCE_BYTES < len(blob) <= MAX_SEALED_BYTES:
        raise ProofRejected("the join answer carries no sealed credential")
    try:
        plain = ChaCha20Poly1305(keys.seal).decrypt(
            blob[:NONCE_BYTES], blob[NONCE_BYTES:], peer_key
        )
        return plain.decode("ascii")
    except (InvalidTag, UnicodeDecodeError):
        raise ProofRejected("the join answer's credential was not sealed for this key") from None


def _b64(text: object) -> bytes:
    if not isinstance(text, str) or len(text) > MAX_SEALED_BYTES * 2:
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return b""
