"""The TLS pin a join token carries, and the check of a server's certificate against it.

A pin is `sha256:<hex>` of the certificate's SubjectPublicKeyInfo, as kubeadm's
`--discovery-token-ca-cert-hash` is: the agent (and `rendezvous health`) accept exactly that
key, so a certificate renewed with the same key keeps every token and membership working.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from .errors import InvalidInput

PIN_PREFIX = "sha256:"
# Certificates remembered as holding the pinned key: one per instance serving the mesh
# (instances.py lists at most 16) and a renewal or two of each.
MAX_REMEMBERED = 64


def pin_of_certificate(pem_or_der: bytes) -> str:
    """`sha256:<hex>` of the certificate's public key (SubjectPublicKeyInfo, DER)."""
    # Imported here: cryptography's Rust extension is about 9 MiB resident, and an agent needs
    # it only for a certificate it has not seen before (PinnedCertificates).
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


class PinnedCertificates:
    """The pin, and the certificates already seen to hold its key, by their SHA-256.

    A certificate whose digest is remembered holds the key without being parsed again: the
    digest names those exact bytes. The TLS handshake itself proved the server holds the
    certificate's private key. So a long-running agent parses (and imports cryptography for)
    only a certificate it has not seen: a renewal, or another instance's."""

    def __init__(self, pin: str, remembered: Iterable[str] = ()) -> None:
        parse_pin(pin)
        self.pin = pin
        self._remembered = dict.fromkeys(list(remembered)[-MAX_REMEMBERED:])

    def holds_pinned_key(self, der: bytes) -> bool:
        digest = certificate_digest(der)
        if digest in self._remembered:
            return True
        try:
            pin = pin_of_certificate(der)
        except ValueError:  # not a certificate cryptography can read
            return False
        if not hmac.compare_digest(pin, self.pin):
            return False
        self.remember(digest)
        return True

    def remember(self, digest: str) -> None:
        self._remembered[digest] = None
        while len(self._remembered) > MAX_REMEMBERED:
            del self._remembered[next(iter(self._remembered))]

    def remembered(self) -> tuple[str, ...]:
        return tuple(self._remembered)
