"""The TLS pin a join token carries, and the check of a server's certificate against it.

A pin is `sha256:<hex>` of the certificate's SubjectPublicKeyInfo, as kubeadm's
`--discovery-token-ca-cert-hash` is: the agent (and `rendezvous health`) accept exactly that
key, so a certificate renewed with the same key keeps every token and membership working.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, Iterable

from .errors import InvalidInput

PIN_PREFIX = "sha256:"
# Certificates remembered as holding the pinned key: one per instance serving the mesh
# (instances.py lists at most 16) and a renewal or two of each.
MAX_REMEMBERED = 64


def pin_of_certificate(pem_or_der: bytes) -> str:
    """`sha256:<hex>` of the certificate's public key (SubjectPublicKeyInfo, DER)."""
    # Imported here: cryptography's Rust extension is about 9 MiB resident, which the agent
    # never loads (PinnedCertificates).
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

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


def certificate_digest(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


PinOf = Callable[[bytes], Awaitable[str]]


def pin_if_certificate(der: bytes) -> str:
    """pin_of_certificate, or "" for bytes that are not a certificate."""
    try:
        return pin_of_certificate(der)
    except ValueError:
        return ""


async def pin_here(der: bytes) -> str:
    """pin_if_certificate in this process (the join process's; the agent asks that one)."""
    return pin_if_certificate(der)


class PinnedCertificates:
    """The pin, and the certificates already seen to hold its key, by their SHA-256.

    A certificate whose digest is remembered holds the key without being parsed again: the
    digest names those exact bytes. The TLS handshake itself proved the server holds the
    certificate's private key. So a long-running agent parses only a certificate it has not
    seen (a renewal, or another instance's), and `pin_of` may do that elsewhere: the agent
    asks its join process (enrolment.py), so it never loads cryptography itself."""

    def __init__(self, pin: str, remembered: Iterable[str] = (), pin_of: PinOf = pin_here) -> None:
        parse_pin(pin)
        self.pin = pin
        self._remembered = dict.fromkeys(list(remembered)[-MAX_REMEMBERED:])
        self._pin_of = pin_of

    async def holds_pinned_key(self, der: bytes) -> bool:
        digest = certificate_digest(der)
        if digest in self._remembered:
            return True
        if not hmac.compare_digest(await self._pin_of(der), self.pin):
            return False
        self.remember(digest)
        return True

    def remember(self, digest: str) -> None:
        self._remembered[digest] = None
        while len(self._remembered) > MAX_REMEMBERED:
            del self._remembered[next(iter(self._remembered))]

    def remembered(self) -> tuple[str, ...]:
        return tuple(self._remembered)
