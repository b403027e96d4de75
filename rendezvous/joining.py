"""Who may become a peer, with which address and routes: the rules of joining, adding peers by
hand and granting routes, each applied inside one store transaction.

A join spends one use of its token in the same transaction that inserts the peer, so of two
joins racing for a token's last use exactly one wins. Only the hash of a credential or a token
secret is stored.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from meshpeer.common import tokens
from meshpeer.common.endpoints import Endpoint, IPNetwork
from meshpeer.common.errors import InvalidInput
from meshpeer.common.proof import JoinKeys, JoinRequest, ProofRejected, verify_join

from .addresses import AddressAllocator
from .damping import ChangeRation
from .datadir import Identity
from .model import (
    Conflict,
    NotFound,
    Peer,
    Rationed,
    Token,
    TokenRejected,
    check_carried,
    check_route,
    parse_routes,
    split_grant,
)
from .peerindex import PeerIndex
from .storage import Store, StoredToken, Transaction
from .timers import MAX_TOKEN_LIFETIME_S, RELAY_PARTNERS_PER_PEER

Joined = tuple[Peer, str, JoinKeys, bool]  # the peer, its new credential, keys, newly created


class Admission:
    def __init__(self, store: Store, index: PeerIndex, identity: Identity) -> None:
        self._store = store
        self._index = index
        self._identity = identity
        self.addresses = AddressAllocator(identity.settings)
        self.relay_changes = ChangeRation()  # registered peers only, as the caller checks
        self.lan_changes = ChangeRation()  # as many, and apart: neither starves the other

    async def create_token(
        self,
        join_token: tokens.JoinToken,
        uses: int,
        lifetime_s: float,
        allowed_routes: tuple[IPNetwork, ...],
        now: float,
        label: str,
    ) -> None:
        if not 1 <= uses <= 1_000_000:
            raise InvalidInput("--uses must be between 1 and 1000000")
        if not 0 < lifetime_s <= MAX_TOKEN_LIFETIME_S:
            raise InvalidInput("--expires must be at most 10 years")
        secret_hash = join_token.secret_hash
        token_id = tokens.token_id(secret_hash)
        token = Token(token_id, uses, now + lifetime_s, now, False, allowed_routes, label)
        async with self._store.transaction() as db:
            await db.insert_token(token, secret_hash)

    async def join(self, request: JoinRequest, now: float) -> Joined:
        settings = self._identity.settings
        requested = parse_routes(list(request.routes), settings.network, settings.own_addresses)
        secret_hash = tokens.decode(request.token).secret_hash
        self.check_new_key(request.public_key)
        keys = verify_join(request, self._identity.private_key)
        async with self._store.transaction() as db:
            token = await _usable_token(db, secret_hash, now)
            existing = await self._existing_peer(db, request.public_key, request.name)
            if existing is None:
                peer = await self._join_new(db, request, token, requested, now)
            else:
                peer = await _join_again(db, request, token, existing, requested)
            credential = secrets.token_urlsafe(32)
            credential_hash = tokens.hash_secret(credential.encode())
            await db.set_credential_hash(request.public_key, credential_hash)
        return peer, credential, keys, existing is None

    async def _join_new(
        self,
        db: Transaction,
        request: JoinRequest,
        token: StoredToken,
        requested: tuple[IPNetwork, ...],
        now: float,
    ) -> Peer:
        if request.time_ms <= await db.removed_join_ms(request.public_key):
            raise ProofRejected("this join is not newer than the last one of this key (a replay)")
        granted, pending = split_grant(requested, token.allowed_routes)
        self._check_routes_free(request.public_key, granted)
        if token.uses_left <= 0:
            raise TokenRejected("this join token is used up; make a new one")
        await db.spend_token_use(token.token_id)
        peer = await self._insert_peer(db, request.public_key, request.name, granted, now, pending)
        await db.record_join(request.public_key, token.token_id, request.time_ms)
        return peer

    async def add_peer(
        self, public_key: bytes, name: str, routes: tuple[Any, ...], now: float
    ) -> Peer:
        self.check_new_key(public_key)
        async with self._store.transaction() as db:
            if await self._existing_peer(db, public_key, name) is not None:
                raise Conflict(f"this key is already registered as {name!r}")
            self._check_routes_free(public_key, routes)
            return await self._insert_peer(db, public_key, name, routes, now)

    async def add_peers(self, entries: list[tuple[bytes, str]], now: float) -> list[Peer]:
        for public_key, _ in entries:
            self.check_new_key(public_key)
        async with self._store.transaction() as db:
            return [await self._insert_peer(db, key, name, (), now) for key, name in entries]

    async def grant_routes(
        self, db: Transaction, peer: Peer, routes: tuple[IPNetwork, ...] | None
    ) -> Peer:
        """The given routes, or all the peer asked for; each checked, none taken by another."""
        settings = self._identity.settings
        wanted = peer.pending_routes if routes is None else routes
        for route in wanted:
            check_route(route, settings.network, settings.own_addresses)
        added = tuple(route for route in wanted if route not in peer.routes)
        check_carried(peer.routes + added)
        self._check_routes_free(peer.public_key, added)
        pending = tuple(route for route in peer.pending_routes if route not in wanted)
        await db.set_routes(peer.public_key, peer.routes + added, pending)
        return replace(peer, routes=peer.routes + added, pending_routes=pending)

    async def revoke_routes(
        self, db: Transaction, peer: Peer, routes: tuple[IPNetwork, ...]
    ) -> Peer:
        """Take routes from a peer, granted or pending."""
        kept = tuple(route for route in peer.routes if route not in routes)
        pending = tuple(route for route in peer.pending_routes if route not in routes)
        await db.set_routes(peer.public_key, kept, pending)
        return replace(peer, routes=kept, pending_routes=pending)

    async def set_relay_partners(
        self, db: Transaction, public_key: bytes, partners: tuple[bytes, ...]
    ) -> Peer:
        """Registered peers only, never itself, each once, and a bounded number (the relay
        tries an initiation's mac1 against each)."""
        known = tuple(
            key for key in dict.fromkeys(partners) if key != public_key and self._index.get(key)
        )
        if len(known) > RELAY_PARTNERS_PER_PEER:
            raise InvalidInput(f"at most {RELAY_PARTNERS_PER_PEER} relay partners per peer")
        peer = self._index.get(public_key)
        if peer is None:
            raise NotFound("no such peer")
        if set(known) == set(peer.relay_partners):
            return peer  # nothing changes: no revision wakes the watchers
        wait_s = self.relay_changes.take(public_key, time.monotonic())
        if wait_s:
            raise Rationed("relay partners change at most every few seconds", wait_s)
        await db.set_relay_partners(public_key, known)
        return replace(peer, relay_partners=known)

    async def set_lan_endpoints(
        self, db: Transaction, public_key: bytes, endpoints: tuple[Endpoint, ...]
    ) -> Peer:
        """Where the peer says it is on its LANs (checked by common.endpoints.lan_endpoints).
        The same list again writes nothing and wakes no watcher; a new one is rationed as
        relay partners are, since every change is a revision every watcher hears."""
        peer = self._index.get(public_key)
        if peer is None:
            raise NotFound("no such peer")
        if endpoints == peer.lan_endpoints:
            return peer
        wait_s = self.lan_changes.take(public_key, time.monotonic())
        if wait_s:
            raise Rationed("LAN endpoints change at most every few seconds", wait_s)
        await db.set_lan_endpoints(public_key, endpoints)
        return replace(peer, lan_endpoints=endpoints)

    def check_new_key(self, public_key: bytes) -> None:
        if public_key == self._identity.public_key:
            raise InvalidInput("that is the rendezvous's own public key, not the peer's")
        try:
            self._identity.private_key.exchange(X25519PublicKey.from_public_bytes(public_key))
        except ValueError:
            # A low-order point: every handshake with it would give an all-zero secret.
            raise InvalidInput("that public key is not a usable X25519 key") from None

    async def _existing_peer(self, db: Transaction, public_key: bytes, name: str) -> Peer | None:
        stored = await db.stored_peer(public_key)
        if stored is None:
            return None
        if stored.peer.name != name:
            raise Conflict(f"this key is already registered as {stored.peer.name!r}")
        return self._index.get(public_key) or stored.peer

    def _check_routes_free(self, public_key: bytes, routes: Iterable[Any]) -> None:
        for route in routes:
            for other in self._index:
                if other.public_key == public_key:
                    continue
                for taken in other.routes:
                    if route.version == taken.version and route.overlaps(taken):
                        raise Conflict(
                            f"route {route} overlaps {taken}, advertised by {other.name}"
                        )

    async def _insert_peer(
        self,
        db: Transaction,
        public_key: bytes,
        name: str,
        routes: tuple[Any, ...],
        now: float,
        pending: tuple[IPNetwork, ...] = (),
    ) -> Peer:
        address = await self.addresses.allocate(db.address_taken)
        peer = Peer(public_key, name, address, routes, pending_routes=pending)
        await db.insert_peer(peer, now)
        return peer


async def _usable_token(db: Transaction, secret_hash: bytes, now: float) -> StoredToken:
    token = await db.token_by_secret(secret_hash)
    if token is None:
        raise TokenRejected("this join token is unknown here; make one with `token create`")
    if token.revoked:
        raise TokenRejected("this join token was revoked; make a new one")
    if token.expires_at <= now:
        raise TokenRejected("this join token has expired; make a new one")
    return token


async def _join_again(
    db: Transaction,
    request: JoinRequest,
    token: StoredToken,
    existing: Peer,
    requested: tuple[IPNetwork, ...],
) -> Peer:
    joined = await db.join_record(request.public_key)
    if request.time_ms <= joined.last_join_ms:
        raise ProofRejected(
            "this join is not newer than the last one of this key (a replay, or this "
            "machine's clock went back)"
        )
    if token.uses_left <= 0 and token.token_id != joined.token_id:
        raise TokenRejected("this join token is used up; make a new one")
    # Grants already given stay given. A token grants routes only to the new machine it
    # admits: to a member joining again, what is new waits for the operator (else a spent
    # token would undo a revocation, and a member could take a token's grant unspent).
    kept = tuple(route for route in requested if route in existing.routes)
    pending = tuple(route for route in requested if route not in kept)
    await db.set_routes(existing.public_key, kept, pending)
    await db.record_join(existing.public_key, None, request.time_ms)
    return replace(existing, routes=kept, pending_routes=pending)
