"""The cryptographic primitives of WireGuard's Noise_IKpsk2 handshake (whitepaper section 5.4).

Everything here is a pure function over bytes, built on hashlib (BLAKE2s) and `cryptography`
(X25519, ChaCha20-Poly1305). XChaCha20-Poly1305, which only cookie replies use, is composed
from HChaCha20 as draft-irtf-cfrg-xchacha section 2.2 describes, because `cryptography` has none.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
LABEL_MAC1 = b"mac1----"
LABEL_COOKIE = b"cookie--"
TAG_SIZE = 16
TAI64_EPOCH = 0x400000000000000A  # TAI64 label of 1970-01-01 00:00:10 TAI, i.e. unix time 0


class CryptoError(Exception):
    """Authentication failed: a bad tag, or a key exchange with a low-order point."""


def blake2s(*parts: bytes) -> bytes:
    """HASH: unkeyed BLAKE2s-256 of the concatenation."""
    return hashlib.blake2s(b"".join(parts)).digest()


def mac(key: bytes, data: bytes) -> bytes:
    """MAC: keyed BLAKE2s with a 16-byte digest (not an HMAC)."""
    return hashlib.blake2s(data, key=key, digest_size=16).digest()


_BLOCK = 64  # BLAKE2s block size: HMAC pads its key to this
_INNER_PAD = bytes(byte ^ 0x36 for byte in range(256))
_OUTER_PAD = bytes(byte ^ 0x5C for byte in range(256))


def hmac_blake2s(key: bytes, data: bytes) -> bytes:
    """HMAC (RFC 2104) over BLAKE2s, by hand: twice as fast as hmac.digest, which goes through
    OpenSSL's generic HMAC, and a handshake makes about twenty of them."""
    if len(key) > _BLOCK:
        key = hashlib.blake2s(key).digest()
    padded = key.ljust(_BLOCK, b"\0")
    inner = hashlib.blake2s(padded.translate(_INNER_PAD) + data).digest()
    return hashlib.blake2s(padded.translate(_OUTER_PAD) + inner).digest()


def kdf(chaining_key: bytes, material: bytes, count: int) -> tuple[bytes, ...]:
    """HKDF over HMAC-BLAKE2s, giving `count` 32-byte outputs (KDF1, KDF2, KDF3)."""
    secret = hmac_blake2s(chaining_key, material)
    outputs: list[bytes] = []
    previous = b""
    for index in range(1, count + 1):
        previous = hmac_blake2s(secret, previous + bytes([index]))
        outputs.append(previous)
    return tuple(outputs)


def nonce(counter: int) -> bytes:
    return b"\x00\x00\x00\x00" + struct.pack("<Q", counter)


def aead_encrypt(key: bytes, counter: int, plaintext: bytes, associated: bytes) -> bytes:
    return ChaCha20Poly1305(key).encrypt(nonce(counter), plaintext, associated)


def aead_decrypt(key: bytes, counter: int, ciphertext: bytes, associated: bytes) -> bytes:
    try:
        return ChaCha20Poly1305(key).decrypt(nonce(counter), ciphertext, associated)
    except InvalidTag as error:
        raise CryptoError("authentication tag mismatch") from error


def dh(private_key: X25519PrivateKey, public_key: bytes | X25519PublicKey) -> bytes:
    """X25519. A key used twice can be passed parsed (`X25519PublicKey`): parsing costs 3 us."""
    try:
        if isinstance(public_key, bytes):
            public_key = X25519PublicKey.from_public_bytes(public_key)
        return private_key.exchange(public_key)
    except ValueError as error:  # an all-zero shared secret: a low-order public key
        raise CryptoError("key exchange with a low-order point") from error


def ephemeral_key(random_bytes: Callable[[int], bytes]) -> X25519PrivateKey:
    """A fresh X25519 key from the caller's randomness (X25519 clamps any 32 bytes), so a core
    given seeded randomness makes the same handshake twice."""
    return X25519PrivateKey.from_private_bytes(random_bytes(32))


def public_bytes(private_key: X25519PrivateKey) -> bytes:
    return private_key.public_key().public_bytes_raw()


def tai64n(unix_time: float) -> bytes:
    """A TAI64N label; like the kernel, keep only the top bits of the nanoseconds so the
    timestamp does not leak a precise clock (whitepaper section 5.1)."""
    seconds = int(unix_time)
    nanoseconds = int((unix_time - seconds) * 1e9) & ~0xFFFFFF
    return struct.pack(">QI", TAI64_EPOCH + seconds, nanoseconds)


_SIGMA = struct.unpack("<4I", b"expand 32-byte k")


def hchacha20(key: bytes, nonce16: bytes) -> bytes:
    """HChaCha20 from a ChaCha20 block: the block is rounds(state) + state, so subtracting the
    known state words 0-3 (constants) and 12-15 (the nonce) leaves the HChaCha20 output."""
    keystream = Cipher(algorithms.ChaCha20(key, nonce16), mode=None).encryptor().update(bytes(64))
    words = struct.unpack("<16I", keystream)
    nonce_words = struct.unpack("<4I", nonce16)
    head = [(words[i] - _SIGMA[i]) & 0xFFFFFFFF for i in range(4)]
    tail = [(words[12 + i] - nonce_words[i]) & 0xFFFFFFFF for i in range(4)]
    return struct.pack("<8I", *head, *tail)


def xaead_encrypt(key: bytes, nonce24: bytes, plaintext: bytes, associated: bytes) -> bytes:
    subkey = hchacha20(key, nonce24[:16])
    return ChaCha20Poly1305(subkey).encrypt(bytes(4) + nonce24[16:], plaintext, associated)


def xaead_decrypt(key: bytes, nonce24: bytes, ciphertext: bytes, associated: bytes) -> bytes:
    subkey = hchacha20(key, nonce24[:16])
    try:
        return ChaCha20Poly1305(subkey).decrypt(bytes(4) + nonce24[16:], ciphertext, associated)
    except InvalidTag as error:
        raise CryptoError("authentication tag mismatch") from error


CHAINING_KEY_INIT = blake2s(CONSTRUCTION)
HASH_INIT = blake2s(CHAINING_KEY_INIT, IDENTIFIER)
