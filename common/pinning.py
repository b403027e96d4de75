"""The TLS pin a join token carries, and the client side that checks it.

A pin is `sha256:<hex>` of the certificate's SubjectPublicKeyInfo, as kubeadm's
`--discovery-token-ca-cert-hash` is: the agent (and `rendezvous health`) accept exactly that
key, so a certificate renewed with the same key keeps every token and membership working.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .errors import InvalidInput

PIN_PREFIX = "sha256:"


def pin_of_certificate(pem_or_der: bytes) -> str:
    """`sha256:<hex>` of the certificate's public key (SubjectPublicKeyInfo, DER)."""
    if pem_or_der.lstrip().startswith(b"-----"):
        certificate = x509.load_pem_x509_certificate(pem_or_der)
    else:
        certificate = x509.load_der_x509_certificate(pem_or_der)
    spki = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return PIN_PREFIX + hashlib.sha256(spki).hexdigest()


def parse_pin(text: object) -> bytes:
    """The 32 bytes of a `sha256:<hex>` pin; InvalidInput for anything else."""
    if isinstance(text, str) and text.startswith(PIN_PREFIX) and len(text) == 7 + 64:
        try:
            return bytes.fromhex(text[len(PIN_PREFIX) :])
        except ValueError:
            pass
    raise InvalidInput("a TLS pin is sha256: and 64 hex digits")


class PinnedKey(aiohttp.Fingerprint):
    """For aiohttp's `ssl=`: accept the server whose certificate holds the pinned public key.

    aiohttp checks a Fingerprint right after the TLS handshake, before it sends a byte of the
    request: a server without the key never sees a token or a credential. (aiohttp's own
    Fingerprint pins the whole certificate, which a renewal would change.)"""

    def __init__(self, pin: str) -> None:
        super().__init__(parse_pin(pin))
        self.pin = pin

    def check(self, transport: asyncio.Transport) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
        got = pin_of_certificate(der) if der else "none"
        if not hmac.compare_digest(got, self.pin):
            host, port, *_ = transport.get_extra_info("peername")
            raise aiohttp.ServerFingerprintMismatch(
                self.fingerprint, bytes.fromhex(got[len(PIN_PREFIX) :] or "00"), host, port
            )


def client_ssl(pin: str | None) -> PinnedKey | bool:
    """What the agent (and `rendezvous health`) passes as aiohttp's `ssl=`: the token's pin, or
    the system's CAs for an API behind a TLS proxy."""
    return PinnedKey(pin) if pin else True
