"""The registry: networks, peers, join tokens and the rendezvous key, behind one façade.

One process serves (`rendezvous serve`); the admin CLI writes to the same data folder from
others. Writes go through the store (storage.py: one durable transaction each, ordered across
processes), then change the peers in memory (peerindex.py) the responder, DNS and the watch
read. The serving process follows other processes' writes (following.py); what the responder
observes is written behind (observations.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from meshpeer.common import tokens
from meshpeer.common.endpoints import Endpoint, IPNetwork
from meshpeer.common.proof import JoinKeys, JoinRequest

from . import datadir, engines, following
from . import settings as config
from .damping import EndpointDamper
from .datadir import ADMIN_TOKEN_NAME, DATABASE_NAME
from .following import ChangeFollower
from .instances import InstanceList, own_instance
from .joining import Admission
from .model import NotFound, Peer, Token
from .observations import Observations
from .peerindex import ChangeKind, Listener, PeerIndex
from .storage import Reader, Store, StoreFailure
from .timers import FORGET_INSTANCE_AFTER_S
from .tls import TlsFiles
from .watchlog import WatchResult

__all__ = [
    "ADMIN_TOKEN_NAME",
    "DATABASE_NAME",
    "ChangeKind",
    "Listener",
    "Registration",
    "Registry",
    "WatchResult",
]


@dataclass(frozen=True, slots=True)
class Registration:
    peer: Peer
    credential: str
    created: bool  # False when the same key and name joined again (a retried join)
    join_keys: JoinKeys  # what seals the credential to the peer's key


class Registry:
    """Open with `await Registry.open(data_dir)`; close with `await registry.close()`."""

    def __init__(self, store: Store, data_dir: Path, identity: datadir.Identity) -> None:
        self._store = store
        self.data_dir = data_dir
        self._identity = identity
        self._index = PeerIndex()
        self._observed = Observations(self._index, store, identity.stored_zone_serial)
        self._admission = Admission(store, self._index, identity)
        self._following = ChangeFollower(store, self._index, self._forget)
        own = own_instance(identity.instance_id, identity.settings)
        self.instances = InstanceList(store, own, self._index.log)
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    # -- opening and closing ------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        data_dir: Path,
        given: config.Overrides | None = None,
        *,
        store: bool = True,
        served: bool = False,
        database: str | None = None,
    ) -> Registry:
        """Open (or create) the data folder. `given` are serve's flags: stored for the other
        commands now, or with `store=False` only once `keep_settings()` says serving began
        (a serve that fails must change nothing `token create` reads). `served=True`: the
        folder must hold the settings of a serve (the admin commands), else InvalidInput.
        `database`: a postgresql:// URL (engines.py); None: SQLite in the data folder."""
        if served and database is None:
            datadir.check_served(data_dir)  # PostgreSQL's meta says so instead (prepare)
        datadir.make_private_dir(data_dir)
        opened = await engines.open_store(data_dir, database)
        shared = database is not None  # other instances may serve from it too
        try:
            async with opened.transaction() as db:
                prepared = datadir.prepare(
                    db, data_dir, given, store=store, served=served, shared=shared
                )
                identity, opened.network_id = await prepared
            datadir.prepare_tls(identity, data_dir)
            if shared:
                async with opened.transaction() as db:
                    await datadir.check_shared_tls(db, identity)
            registry = cls(opened, data_dir, identity)
            await registry._load_peers()
        except BaseException:
            await opened.close()
            raise
        return registry

    async def _load_peers(self) -> None:
        for stored in await self._store.load_peers():
            self._index.remember(stored.peer, stored.credential_hash)
        self._admission.addresses.resume_after(self._index)
        await self._following.start_from_store()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            # This swallows a cancellation of close() itself too, on purpose: a close cut
            # short leaves the store open, and aiosqlite's thread (not a daemon) then holds
            # the process at exit. The loops end within a round once cancelled.
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await self.instances.retire()
        self._observed.publish_all_held(time.time())
        with contextlib.suppress(StoreFailure):
            await self.flush()
        await self._store.close()

    def start_background(self) -> None:
        """Serving only: write observations behind, follow other processes' writes, and
        stamp this instance in the list of those serving."""
        flushing = self._observed.write_behind()
        self._tasks.append(asyncio.create_task(flushing, name="registry-flush"))
        follow = self._following.run()
        self._tasks.append(asyncio.create_task(follow, name="registry-follow"))
        heartbeat = self.instances.run()
        self._tasks.append(asyncio.create_task(heartbeat, name="registry-heartbeat"))
        tidying = following.tidy_forever(self.tidy)
        self._tasks.append(asyncio.create_task(tidying, name="registry-tidy"))

    async def tidy(self) -> int:
        """The change log compacted and unused instances forgotten (Store.tidy): rows deleted."""
        return await self._store.tidy(FORGET_INSTANCE_AFTER_S)

    async def keep_settings(self) -> None:
        """Serving began: from now on the other commands read these settings."""
        identity = self._identity
        async with self._store.transaction() as db:
            await datadir.store_settings(db, self.data_dir, identity, write=True)

    # -- who the rendezvous is ----------------------------------------------------------------

    @property
    def settings(self) -> config.Settings:
        return self._identity.settings

    @property
    def given(self) -> config.Overrides:
        return self._identity.given

    @property
    def private_key(self) -> X25519PrivateKey:
        return self._identity.private_key

    @property
    def public_key(self) -> bytes:
        return self._identity.public_key

    @property
    def tls_files(self) -> TlsFiles | None:
        """None: plain HTTP behind the operator's proxy."""
        return self._identity.tls_files

    @property
    def tls_pin(self) -> str | None:
        return self._identity.tls_pin

    # -- reading ------------------------------------------------------------------------------

    def peers(self) -> list[Peer]:
        return sorted(self._index, key=lambda peer: peer.name)

    def all_peers(self) -> list[Peer]:
        """Every peer, in no particular order (cheaper than `peers()` at 100,000)."""
        return list(self._index)

    def with_endpoint(self) -> int:
        return sum(1 for peer in self._index if peer.endpoint is not None)

    def peer(self, public_key: bytes) -> Peer | None:
        return self._index.get(public_key)

    def __len__(self) -> int:
        return len(self._index)

    def find(self, name_or_key: str) -> Peer:
        return self._index.find(name_or_key)

    def authenticate(self, credential: str) -> Peer | None:
        return self._index.authenticate(credential)

    async def is_admin(self, secret: str) -> bool:
        return datadir.is_admin(await self._store.read_meta(), secret)

    def subscribe(self, listener: Listener) -> None:
        self._index.subscribe(listener)

    # -- tokens -------------------------------------------------------------------------------

    async def create_token(
        self,
        uses: int,
        lifetime_s: float,
        allowed_routes: tuple[IPNetwork, ...] = (),
        now: float | None = None,
        label: str = "",
    ) -> str:
        """A join token; peers that join with it are granted routes inside `allowed_routes`.
        `label` is the operator's note of what it is for (`token list` shows it)."""
        join_token = tokens.JoinToken(
            self.settings.public_api_url, tokens.new_secret(), self.public_key, self.tls_pin
        )
        now = time.time() if now is None else now
        await self._admission.create_token(join_token, uses, lifetime_s, allowed_routes, now, label)
        return join_token.encode()

    async def list_tokens(self) -> list[Token]:
        return await self._store.list_tokens()

    async def revoke_token(self, token_id: str) -> None:
        async with self._store.transaction() as db:
            if not await db.revoke_token(token_id):
                raise NotFound(f"no token {token_id!r}; `rendezvous token list` shows them")

    # -- joining and leaving ------------------------------------------------------------------

    async def join(self, request: JoinRequest, now: float | None = None) -> Registration:
        """Register the peer whose private key signed `request`; durable before it returns.

        A registered key joins again only with a newer signed time (a join retried after a lost
        answer, a machine that lost its credential): it keeps its address, gets a new
        credential, and spends no use of the token it first joined with."""
        now = time.time() if now is None else now
        peer, credential, keys, created = await self._admission.join(request, now)
        self._index.remember(peer, tokens.hash_secret(credential.encode()))
        return Registration(peer, credential, created, keys)

    async def add_peer(
        self, public_key: bytes, name: str, routes: tuple[Any, ...] = (), now: float | None = None
    ) -> Peer:
        """Register a peer by hand (no token): a phone or a box that cannot run the agent.
        The operator adds it, so its routes are granted."""
        now = time.time() if now is None else now
        peer = await self._admission.add_peer(public_key, name, routes, now)
        self._apply_own(peer)
        return peer

    async def add_peers(
        self, entries: list[tuple[bytes, str]], now: float | None = None
    ) -> list[Peer]:
        """Register many peers by hand in one transaction (all or none): an import, a benchmark."""
        now = time.time() if now is None else now
        added = await self._admission.add_peers(entries, now)
        for peer in added:
            self._apply_own(peer)
        return added

    async def grant_routes(
        self, name_or_key: str, routes: tuple[IPNetwork, ...] | None = None
    ) -> Peer:
        """The operator grants routes to a peer: the given ones, or all it asked for."""
        async with self._store.transaction() as db:
            await self._catch_up(db)
            peer = await self._admission.grant_routes(db, self.find(name_or_key), routes)
        self._apply_own(peer)
        return peer

    async def revoke_routes(self, name_or_key: str, routes: tuple[IPNetwork, ...]) -> Peer:
        """Take routes from a peer, granted or pending; agents remove them within a second."""
        async with self._store.transaction() as db:
            await self._catch_up(db)
            peer = await self._admission.revoke_routes(db, self.find(name_or_key), routes)
        self._apply_own(peer)
        return peer

    async def set_relay_partners(self, peer: Peer, partners: tuple[bytes, ...]) -> Peer:
        """The peers `peer` reaches through the relay: registered ones only, itself never."""
        async with self._store.transaction() as db:
            await self._catch_up(db)
            peer = await self._admission.set_relay_partners(db, peer.public_key, partners)
        self._apply_own(peer)
        return peer

    async def set_lan_endpoints(self, peer: Peer, endpoints: tuple[Endpoint, ...]) -> Peer:
        """Where `peer` says it is on its LANs (PUT /v1/lan), as every peer will hear it."""
        async with self._store.transaction() as db:
            await self._catch_up(db)
            peer = await self._admission.set_lan_endpoints(db, peer.public_key, endpoints)
        self._apply_own(peer)
        return peer

    async def remove_peer(self, name_or_key: str) -> Peer:
        async with self._store.transaction() as db:
            await self._catch_up(db)
            peer = self.find(name_or_key)
            await db.delete_peer(peer.public_key)
        self._forget(peer.public_key)
        return peer

    def _apply_own(self, peer: Peer) -> None:
        """Our own committed write; the peer keeps its credential."""
        self._index.remember(peer, self._index.credential_hash(peer.public_key))

    def _forget(self, public_key: bytes) -> None:
        self._admission.relay_changes.forget(public_key)
        self._admission.lan_changes.forget(public_key)
        self._observed.forget(public_key)
        self._index.forget(public_key)

    # -- what the responder observes ----------------------------------------------------------

    @property
    def damper(self) -> EndpointDamper:
        return self._observed.damper

    @property
    def zone_serial(self) -> Callable[[], int] | None:
        """The DNS zone's serial, kept at each flush (set by the serving process)."""
        return self._observed.zone_serial

    @zone_serial.setter
    def zone_serial(self, serial: Callable[[], int] | None) -> None:
        self._observed.zone_serial = serial

    @property
    def stored_zone_serial(self) -> int:
        return self._observed.stored_zone_serial

    def observe_handshake(self, public_key: bytes, timestamp: bytes, now: float) -> None:
        self._observed.handshake(public_key, timestamp, now)

    def observe_endpoint(self, public_key: bytes, source: Endpoint, now: float) -> None:
        """An authenticated keepalive came from `source`: that is the peer's NAT mapping."""
        self._observed.endpoint(public_key, source, now)

    def publish_held_endpoints(self, now: float) -> None:
        self._observed.publish_held(now)

    async def flush(self) -> None:
        """Write observed endpoints and handshakes, and the zone's serial."""
        await self._observed.flush()

    # -- other processes' writes --------------------------------------------------------------

    async def sync(self) -> None:
        """Apply what other processes committed since we last looked."""
        await self._following.sync()

    async def _catch_up(self, reader: Reader) -> None:
        await self._following.catch_up(reader)

    # -- the watch API ------------------------------------------------------------------------

    @property
    def epoch(self) -> str:
        return self._index.log.epoch

    @property
    def revision(self) -> int:
        return self._index.log.revision

    async def watch(self, epoch: str | None, since: int | None, timeout_s: float) -> WatchResult:
        """Changes after revision `since` of `epoch`, waiting up to `timeout_s` for one; at
        once when the registry is closing. A full answer's peers are in no particular order."""
        return await self._index.log.watch(epoch, since, timeout_s, self._index.peers)

    def stop_watchers(self) -> None:
        """Answer every waiting watch now (a stopping server must not wait for long polls)."""
        self._index.log.stop_watchers()
