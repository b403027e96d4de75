"""The serving process's peers in memory: the handshake responder, DNS and the watch API read
from here, never from disk. Each change is announced to listeners and the watch log."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Literal

from meshpeer.common import tokens
from meshpeer.common.errors import InvalidInput
from meshpeer.common.keys import parse_key

from .model import NotFound, Peer
from .watchlog import WatchLog

ChangeKind = Literal["added", "updated", "removed"]
Listener = Callable[[ChangeKind, Peer], None]


class PeerIndex:
    def __init__(self) -> None:
        self.peers: dict[bytes, Peer] = {}
        self.log = WatchLog()
        self._by_name: dict[str, bytes] = {}
        self._by_credential: dict[bytes, bytes] = {}  # credential hash -> public key
        self._credential_of: dict[bytes, bytes] = {}  # public key -> credential hash
        self._listeners: list[Listener] = []

    def __len__(self) -> int:
        return len(self.peers)

    def __iter__(self) -> Iterator[Peer]:
        return iter(self.peers.values())

    def get(self, public_key: bytes) -> Peer | None:
        return self.peers.get(public_key)

    def find(self, name_or_key: str) -> Peer:
        key = self._by_name.get(name_or_key)
        if key is None:
            with contextlib.suppress(InvalidInput):
                key = parse_key(name_or_key)
        peer = self.peers.get(key) if key else None
        if peer is None:
            raise NotFound(f"no peer named or keyed {name_or_key!r}; `rendezvous peers` lists them")
        return peer

    def authenticate(self, credential: str) -> Peer | None:
        key = self._by_credential.get(tokens.hash_secret(credential.encode()))
        return self.peers.get(key) if key else None

    def credential_hash(self, public_key: bytes) -> bytes | None:
        return self._credential_of.get(public_key)

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def remember(self, peer: Peer, credential_hash: bytes | None) -> None:
        known = self.peers.get(peer.public_key)
        if known is not None and self._by_name.get(known.name) == peer.public_key:
            del self._by_name[known.name]
        self._drop_credential(peer.public_key)
        self.peers[peer.public_key] = peer
        self._by_name[peer.name] = peer.public_key
        if credential_hash:
            self._by_credential[credential_hash] = peer.public_key
            self._credential_of[peer.public_key] = credential_hash
        if known != peer:
            self.publish("added" if known is None else "updated", peer)

    def observe(self, peer: Peer) -> None:
        """What the responder saw of a known peer: no change of name or credential."""
        self.peers[peer.public_key] = peer

    def forget(self, public_key: bytes) -> Peer | None:
        peer = self.peers.pop(public_key, None)
        if peer is None:
            return None
        if self._by_name.get(peer.name) == public_key:
            del self._by_name[peer.name]
        self._drop_credential(public_key)
        self.publish("removed", peer)
        return peer

    def publish(self, kind: ChangeKind, peer: Peer) -> None:
        self.log.record(peer.public_key)
        for listener in self._listeners:
            listener(kind, peer)

    def _drop_credential(self, public_key: bytes) -> None:
        stale = self._credential_of.pop(public_key, None)
        if stale is not None:
            self._by_credential.pop(stale, None)
