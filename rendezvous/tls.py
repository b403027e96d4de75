"""The API's TLS certificate and the pin that join tokens carry.

On first use the rendezvous makes its own certificate (ECDSA P-256, self-signed) in the data
folder; an operator may give their own with `--tls-cert/--tls-key`. Either way a token carries
`sha256:<hex>` of the certificate's SubjectPublicKeyInfo, as kubeadm's
`--discovery-token-ca-cert-hash` does: agents accept exactly that key, so a certificate renewed
with the same key keeps every token and membership working. Hostnames and CAs play no part.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meshpeer.common.errors import InvalidInput
from meshpeer.common.files import write_atomically
from meshpeer.common.pinning import pin_of_certificate

CERT_NAME = "tls.crt"
KEY_NAME = "tls.key"
# Pinned by key, so expiry guards nothing here; a long life spares operators a renewal chore.
SELF_SIGNED_DAYS = 20 * 365


@dataclass(frozen=True, slots=True)
class TlsFiles:
    cert: Path
    key: Path


def ensure_self_signed(data_dir: Path, host: str) -> TlsFiles:
    """The data folder's certificate, made once (key 0600) and kept across restarts."""
    files = TlsFiles(data_dir / CERT_NAME, data_dir / KEY_NAME)
    if files.cert.exists() and files.key.exists():
        return files
    key = ec.generate_private_key(ec.SECP256R1())
    write_atomically(files.key, key_pem(key), 0o600)
    certificate = _self_signed(key, host).public_bytes(serialization.Encoding.PEM)
    write_atomically(files.cert, certificate, 0o644)
    return files


def read_pin(files: TlsFiles) -> str:
    try:
        return pin_of_certificate(files.cert.read_bytes())
    except OSError as error:
        raise InvalidInput(f"cannot read --tls-cert {files.cert}: {error.strerror}") from None
    except ValueError:
        raise InvalidInput(f"--tls-cert {files.cert} is not a PEM certificate") from None


def server_context(files: TlsFiles) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(files.cert, files.key)
    except (OSError, ssl.SSLError) as error:
        raise InvalidInput(
            f"cannot use --tls-cert {files.cert} with --tls-key {files.key}: {error}"
        ) from None
    return context


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _self_signed(key: ec.EllipticCurvePrivateKey, host: str) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "meshpeer rendezvous")])
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=SELF_SIGNED_DAYS))
        .add_extension(x509.SubjectAlternativeName([_general_name(host)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )


def _general_name(host: str) -> x509.GeneralName:
    """The public host in the SAN: not what agents check, but what curl and browsers show."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)
