"""The initiator side of the handshake, sans-I/O: simulated peers for tests and benchmarks.

It speaks to any WireGuard responder (ours or wireguard-go): build an initiation, consume the
response (or a cookie reply, then build the next initiation with mac2), send keepalives. Like
the responder it reads no clock and no randomness of its own: the caller passes both.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from meshpeer.common.errors import Failure
from meshpeer.common.keys import KEY_SIZE

from . import noise, wire
from .timers import COOKIE_LIFETIME_S


class HandshakeFailed(Failure):
    """The responder's answer did not authenticate or does not answer our initiation."""


@dataclass(frozen=True, slots=True)
class Keys:
    local_index: int
    remote_index: int
    sending_key: bytes
    receiving_key: bytes


@dataclass(slots=True)
class _Pending:
    sender: int
    ephemeral: X25519PrivateKey
    chaining_key: bytes
    hash_: bytes
    mac1: bytes


class Initiator:
    def __init__(
        self,
        private_key: X25519PrivateKey,
        responder_public_key: bytes,
        *,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._private_key = private_key
        self.public_key = noise.public_bytes(private_key)
        self._responder = responder_public_key
        self._static_static = noise.dh(private_key, responder_public_key)
        self._random_bytes = random_bytes
        self._pending: _Pending | None = None
        self._cookie: tuple[bytes, float] | None = None
        self.keys: Keys | None = None
        self._counter = 0

    def initiation(self, unix_time: float, now: float = 0.0) -> bytes:
        """`unix_time` dates the TAI64N stamp (the responder's replay floor); `now` is the
        monotonic clock a cookie's age is measured on. The caller owns both clocks."""
        ephemeral = noise.ephemeral_key(self._random_bytes)
        ephemeral_public = noise.public_bytes(ephemeral)
        hash_ = noise.blake2s(noise.HASH_INIT, self._responder)
        chaining_key = noise.kdf(noise.CHAINING_KEY_INIT, ephemeral_public, 1)[0]
        hash_ = noise.blake2s(hash_, ephemeral_public)
        chaining_key, key = noise.kdf(chaining_key, noise.dh(ephemeral, self._responder), 2)
        static = noise.aead_encrypt(key, 0, self.public_key, hash_)
        hash_ = noise.blake2s(hash_, static)
        chaining_key, key = noise.kdf(chaining_key, self._static_static, 2)
        stamp = noise.tai64n(unix_time)
        timestamp = noise.aead_encrypt(key, 0, stamp, hash_)
        hash_ = noise.blake2s(hash_, timestamp)
        sender = int.from_bytes(self._random_bytes(4), "little")
        body = wire.initiation_body(sender, ephemeral_public, static, timestamp)
        mac1 = noise.mac(noise.blake2s(noise.LABEL_MAC1, self._responder), body)
        self._pending = _Pending(sender, ephemeral, chaining_key, hash_, mac1)
        return body + mac1 + self._mac2(body + mac1, now)

    def _mac2(self, covered: bytes, now: float) -> bytes:
        if self._cookie is None or now - self._cookie[1] >= COOKIE_LIFETIME_S:
            return bytes(16)
        return noise.mac(self._cookie[0], covered)

    def receive(self, datagram: bytes, now: float = 0.0) -> None:
        """Consume a response (completing the handshake) or a cookie reply."""
        try:
            message = wire.parse(datagram)
        except wire.MalformedMessage as error:
            raise HandshakeFailed(str(error)) from error
        if isinstance(message, wire.CookieReply):
            self._consume_cookie_reply(message, now)
        elif isinstance(message, wire.Response):
            self._consume_response(message)
        else:
            raise HandshakeFailed(f"an initiator does not expect {type(message).__name__}")

    def _consume_cookie_reply(self, message: wire.CookieReply, now: float) -> None:
        pending = self._require_pending(message.receiver)
        key = noise.blake2s(noise.LABEL_COOKIE, self._responder)
        try:
            cookie = noise.xaead_decrypt(key, message.nonce, message.encrypted_cookie, pending.mac1)
        except noise.CryptoError as error:
            raise HandshakeFailed("cookie reply does not authenticate") from error
        self._cookie = (cookie, now)

    def _consume_response(self, message: wire.Response) -> None:
        pending = self._require_pending(message.receiver)
        body = message.raw[: wire.RESPONSE_MAC1_END]
        expected = noise.mac(noise.blake2s(noise.LABEL_MAC1, self.public_key), body)
        if not hmac.compare_digest(expected, message.mac1):
            raise HandshakeFailed("response mac1 is wrong")
        try:
            chaining_key = noise.kdf(pending.chaining_key, message.ephemeral, 1)[0]
            hash_ = noise.blake2s(pending.hash_, message.ephemeral)
            shared = noise.dh(pending.ephemeral, message.ephemeral)
            chaining_key = noise.kdf(chaining_key, shared, 1)[0]
            shared = noise.dh(self._private_key, message.ephemeral)
            chaining_key = noise.kdf(chaining_key, shared, 1)[0]
            chaining_key, tau, key = noise.kdf(chaining_key, bytes(KEY_SIZE), 3)
            hash_ = noise.blake2s(hash_, tau)
            noise.aead_decrypt(key, 0, message.encrypted_nothing, hash_)
        except noise.CryptoError as error:
            raise HandshakeFailed("response does not authenticate") from error
        sending_key, receiving_key = noise.kdf(chaining_key, b"", 2)
        self.keys = Keys(pending.sender, message.sender, sending_key, receiving_key)
        self._pending = None
        self._counter = 0

    def _require_pending(self, receiver: int) -> _Pending:
        if self._pending is None or self._pending.sender != receiver:
            raise HandshakeFailed("the answer is not for our latest initiation")
        return self._pending

    def keepalive(self) -> bytes:
        """A transport message with an empty payload, the next counter."""
        if self.keys is None:
            raise HandshakeFailed("no session: complete a handshake first")
        ciphertext = noise.aead_encrypt(self.keys.sending_key, self._counter, b"", b"")
        datagram = wire.transport(self.keys.remote_index, self._counter, ciphertext)
        self._counter += 1
        return datagram
