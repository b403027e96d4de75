"""The rendezvous side of WireGuard: a sans-I/O responder (whitepaper sections 5.3, 5.4).

Feed it datagrams with `receive_datagram(data, source, now)`; take what to send from
`datagrams_to_send()` and what happened from `next_event()`. Its only inputs are those and the
injected `random_bytes` (every ephemeral key, session index, cookie secret and nonce): the same
seed and clock give the same bytes. It never sends transport data: it
answers initiations from authorised keys, authenticates the keepalives that follow, and reports
the address they came from. Whatever a datagram holds, nothing escapes but counted drops.
"""

from __future__ import annotations

import collections
import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from meshpeer.common.endpoints import Endpoint
from meshpeer.common.keys import KEY_SIZE

from . import noise, timers, wire
from .replay import ReplayWindow


@dataclass(frozen=True, slots=True)
class InitiationAccepted:
    """An authorised peer completed a handshake from `source` (not yet a confirmed address:
    a recorded initiation can be replayed from anywhere until its timestamp is superseded)."""

    public_key: bytes
    source: Endpoint
    timestamp: bytes


@dataclass(frozen=True, slots=True)
class EndpointConfirmed:
    """An authenticated transport packet (a keepalive) came from `source`: the NAT's mapping."""

    public_key: bytes
    source: Endpoint


Event = InitiationAccepted | EndpointConfirmed


@dataclass(slots=True)
class _Peer:
    public_key: bytes
    latest_timestamp: bytes = b""
    last_initiation_at: float | None = None
    static_static: bytes | None = None  # DH(our static, theirs): the same for every handshake
    parsed_key: X25519PublicKey | None = None  # their key, parsed once for every response
    response_mac1_key: bytes | None = None  # HASH(LABEL_MAC1 || their key): likewise
    sessions: collections.deque[int] = field(
        default_factory=lambda: collections.deque(maxlen=timers.SESSIONS_PER_PEER)
    )


@dataclass(slots=True)
class _Session:
    public_key: bytes
    receiving_key: bytes
    receiving: ChaCha20Poly1305  # built once from receiving_key: every keepalive uses it
    created_at: float
    replay: ReplayWindow = field(default_factory=ReplayWindow)


class Responder:
    def __init__(
        self,
        private_key: X25519PrivateKey,
        *,
        initiations_per_s_under_load: int = timers.UNDER_LOAD_INITIATIONS_PER_S,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._private_key = private_key
        self.public_key = noise.public_bytes(private_key)
        self._random_bytes = random_bytes
        self._mac1_key = noise.blake2s(noise.LABEL_MAC1, self.public_key)
        self._cookie_key = noise.blake2s(noise.LABEL_COOKIE, self.public_key)
        self._hash_after_static = noise.blake2s(noise.HASH_INIT, self.public_key)
        self._peers: dict[bytes, _Peer] = {}
        self._sessions: dict[int, _Session] = {}
        self._outgoing: list[tuple[bytes, Endpoint]] = []
        self._events: collections.deque[Event] = collections.deque()
        self.drops: collections.Counter[str] = collections.Counter()
        self.counts: collections.Counter[str] = collections.Counter()
        self._load_limit = initiations_per_s_under_load
        self._load_window_start = float("-inf")
        self._load_window_count = 0
        self._under_load_until = float("-inf")
        self._cookie_secret = b""
        self._cookie_secret_born = float("-inf")

    # -- the peers we answer ------------------------------------------------------------------

    def authorize(self, public_key: bytes, latest_timestamp: bytes = b"") -> None:
        """Answer this key; `latest_timestamp` restores the replay floor kept across restarts."""
        peer = self._peers.setdefault(public_key, _Peer(public_key))
        peer.latest_timestamp = max(peer.latest_timestamp, latest_timestamp)

    def revoke(self, public_key: bytes) -> None:
        peer = self._peers.pop(public_key, None)
        for index in peer.sessions if peer else ():
            self._sessions.pop(index, None)

    # -- the sans-I/O interface ---------------------------------------------------------------

    def receive_datagram(self, data: bytes, source: Endpoint, now: float) -> None:
        message = wire.parse_counted(data, self.drops)
        if message is None:
            return
        if isinstance(message, wire.Initiation):
            self._receive_initiation(message, source, now)
        elif isinstance(message, wire.Transport):
            self._receive_transport(message, source, now)
        else:
            self.drops["unexpected_type"] += 1

    def claims(self, data: bytes) -> bool:
        """Whether a datagram is for us rather than for the relay: an initiation whose mac1 is
        keyed by our public key, a transport message to one of our sessions, or anything that
        is not a well-formed message another peer could be waiting for (we count it)."""
        if len(data) < 8:
            return True
        kind = data[0]
        if kind == wire.MessageType.INITIATION and len(data) == wire.INITIATION_SIZE:
            body, mac1 = data[: wire.INITIATION_MAC1_END], data[wire.INITIATION_MAC1_END :][:16]
            return hmac.compare_digest(noise.mac(self._mac1_key, body), mac1)
        if kind == wire.MessageType.TRANSPORT:
            return int.from_bytes(data[4:8], "little") in self._sessions
        return kind not in (wire.MessageType.RESPONSE, wire.MessageType.COOKIE_REPLY)

    def datagrams_to_send(self) -> list[tuple[bytes, Endpoint]]:
        outgoing, self._outgoing = self._outgoing, []
        return outgoing

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def under_load(self, now: float) -> bool:
        return now < self._under_load_until

    def receiving_key(self, index: int) -> bytes | None:
        """The transport key of our session `index` (the initiator's sending key): for tests."""
        session = self._sessions.get(index)
        return session.receiving_key if session else None

    # -- initiations --------------------------------------------------------------------------

    def _receive_initiation(self, message: wire.Initiation, source: Endpoint, now: float) -> None:
        body = message.raw[: wire.INITIATION_MAC1_END]
        if not hmac.compare_digest(noise.mac(self._mac1_key, body), message.mac1):
            self.drops["bad_mac1"] += 1
            return
        if self._note_load(now) and not self._valid_mac2(message, source, now):
            self._send_cookie_reply(message, source, now)
            self.drops["cookie_required"] += 1
            return
        try:
            accepted = self._consume_initiation(message, now)
        except noise.CryptoError:
            self.drops["bad_initiation"] += 1
            return
        if accepted is not None:
            peer, their_ephemeral, chaining_key, hash_ = accepted
            self._respond(peer, message, their_ephemeral, chaining_key, hash_, source, now)

    def _consume_initiation(
        self, message: wire.Initiation, now: float
    ) -> tuple[_Peer, X25519PublicKey, bytes, bytes] | None:
        chaining_key = noise.kdf(noise.CHAINING_KEY_INIT, message.ephemeral, 1)[0]
        hash_ = noise.blake2s(self._hash_after_static, message.ephemeral)
        their_ephemeral = X25519PublicKey.from_public_bytes(message.ephemeral)  # used twice
        shared = noise.dh(self._private_key, their_ephemeral)
        chaining_key, key = noise.kdf(chaining_key, shared, 2)
        static = noise.aead_decrypt(key, 0, message.encrypted_static, hash_)
        hash_ = noise.blake2s(hash_, message.encrypted_static)
        peer = self._peers.get(static)
        if peer is None:
            self.drops["unknown_peer"] += 1
            return None
        if peer.static_static is None:
            peer.static_static = noise.dh(self._private_key, static)
        chaining_key, key = noise.kdf(chaining_key, peer.static_static, 2)
        timestamp = noise.aead_decrypt(key, 0, message.encrypted_timestamp, hash_)
        hash_ = noise.blake2s(hash_, message.encrypted_timestamp)
        if timestamp <= peer.latest_timestamp:
            self.drops["replayed_initiation"] += 1
            return None
        if (
            peer.last_initiation_at is not None
            and now - peer.last_initiation_at < timers.INITIATION_MIN_INTERVAL_S
        ):
            self.drops["initiation_flood"] += 1
            return None
        peer.latest_timestamp = timestamp
        peer.last_initiation_at = now
        return peer, their_ephemeral, chaining_key, hash_

    def _respond(
        self,
        peer: _Peer,
        message: wire.Initiation,
        their_ephemeral: X25519PublicKey,
        chaining_key: bytes,
        hash_: bytes,
        source: Endpoint,
        now: float,
    ) -> None:
        ephemeral = noise.ephemeral_key(self._random_bytes)
        ephemeral_public = noise.public_bytes(ephemeral)
        chaining_key = noise.kdf(chaining_key, ephemeral_public, 1)[0]
        hash_ = noise.blake2s(hash_, ephemeral_public)
        if peer.parsed_key is None:
            peer.parsed_key = X25519PublicKey.from_public_bytes(peer.public_key)
        chaining_key = noise.kdf(chaining_key, noise.dh(ephemeral, their_ephemeral), 1)[0]
        chaining_key = noise.kdf(chaining_key, noise.dh(ephemeral, peer.parsed_key), 1)[0]
        chaining_key, tau, key = noise.kdf(chaining_key, bytes(KEY_SIZE), 3)  # no PSK
        hash_ = noise.blake2s(hash_, tau)
        nothing = noise.aead_encrypt(key, 0, b"", hash_)
        index = self._new_session(peer, chaining_key, now)
        body = wire.response_body(index, message.sender, ephemeral_public, nothing)
        if peer.response_mac1_key is None:
            peer.response_mac1_key = noise.blake2s(noise.LABEL_MAC1, peer.public_key)
        mac1 = noise.mac(peer.response_mac1_key, body)
        self._outgoing.append((body + mac1 + bytes(16), source))
        self._events.append(InitiationAccepted(peer.public_key, source, peer.latest_timestamp))
        self.counts["handshakes"] += 1

    def _new_session(self, peer: _Peer, chaining_key: bytes, now: float) -> int:
        receiving_key, _sending_key = noise.kdf(chaining_key, b"", 2)
        index = self._free_index()
        if len(peer.sessions) == peer.sessions.maxlen:
            self._sessions.pop(peer.sessions[0], None)
        peer.sessions.append(index)
        cipher = ChaCha20Poly1305(receiving_key)
        self._sessions[index] = _Session(peer.public_key, receiving_key, cipher, now)
        return index

    def _free_index(self) -> int:
        while True:
            index = int.from_bytes(self._random_bytes(4), "little")
            if index not in self._sessions:
                return index

    # -- transport packets --------------------------------------------------------------------

    def _receive_transport(self, message: wire.Transport, source: Endpoint, now: float) -> None:
        session = self._sessions.get(message.receiver)
        if session is None:
            self.drops["unknown_session"] += 1
            return
        if now - session.created_at >= timers.REJECT_AFTER_TIME_S:
            self.drops["expired_session"] += 1
            return
        try:
            session.receiving.decrypt(noise.nonce(message.counter), message.ciphertext, b"")
        except InvalidTag:
            self.drops["bad_transport"] += 1
            return
        if not session.replay.accept(message.counter):
            self.drops["replayed_transport"] += 1
            return
        self.counts["transport"] += 1
        self._events.append(EndpointConfirmed(session.public_key, source))

    # -- cookies, under load (whitepaper section 5.4.7) ----------------------------------------

    def _note_load(self, now: float) -> bool:
        """Count this initiation; True while we are under load."""
        if now - self._load_window_start >= timers.UNDER_LOAD_WINDOW_S:
            self._load_window_start, self._load_window_count = now, 0
        self._load_window_count += 1
        if self._load_window_count > self._load_limit:
            self._under_load_until = now + timers.UNDER_LOAD_HOLD_S
        return self.under_load(now)

    def _cookie(self, source: Endpoint, now: float) -> bytes:
        if now - self._cookie_secret_born >= timers.COOKIE_SECRET_LIFETIME_S:
            self._cookie_secret = self._random_bytes(32)
            self._cookie_secret_born = now
        return noise.mac(self._cookie_secret, _address_bytes(source))

    def _valid_mac2(self, message: wire.Initiation, source: Endpoint, now: float) -> bool:
        expected = noise.mac(self._cookie(source, now), message.raw[: wire.INITIATION_MAC2_END])
        return hmac.compare_digest(expected, message.mac2)

    def _send_cookie_reply(self, message: wire.Initiation, source: Endpoint, now: float) -> None:
        nonce = self._random_bytes(24)
        sealed = noise.xaead_encrypt(
            self._cookie_key, nonce, self._cookie(source, now), message.mac1
        )
        self._outgoing.append((wire.cookie_reply(message.sender, nonce, sealed), source))
        self.counts["cookie_replies"] += 1


def _address_bytes(source: Endpoint) -> bytes:
    host, port = source
    return host.encode() + port.to_bytes(2, "big")
