"""The registry: networks, peers, join tokens and the rendezvous key, in SQLite (WAL).

One process serves (`rendezvous serve`); the admin CLI writes to the same file from others.
Every write is one `BEGIN IMMEDIATE` transaction, so SQLite orders writers across processes,
and commits with `synchronous=FULL`: a join is acknowledged only once it would survive a crash.

The serving process keeps every peer in memory (the handshake responder, DNS and the watch API
read from there, never from disk) and learns of other processes' writes from a `changes` table,
polled cheaply through `PRAGMA data_version`. What the responder observes (endpoints, handshake
times, the TAI64N replay floor) is written behind, in batches: an endpoint change within
`ENDPOINT_FLUSH_S`, the rest within `LAZY_FLUSH_S`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import itertools
import json
import logging
import os
import secrets
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import aiosqlite
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from meshpeer.common import tokens
from meshpeer.common.endpoints import Endpoint, IPAddress, IPNetwork
from meshpeer.common.errors import InvalidInput
from meshpeer.common.keys import encode_key, parse_key
from meshpeer.common.proof import JoinKeys, JoinRequest, ProofRejected, verify_join

from . import settings as config
from .damping import EndpointDamper
from .model import (
    Conflict,
    NotFound,
    Peer,
    Token,
    TokenRejected,
    check_carried,
    check_route,
    parse_cidr,
    parse_routes,
    split_grant,
)
from .noise import public_bytes
from .timers import WATCH_COALESCE_S
from .tls import TlsFiles, ensure_self_signed, read_pin

logger = logging.getLogger("meshpeer.rendezvous.registry")

DATABASE_NAME = "rendezvous.sqlite3"
ADMIN_TOKEN_NAME = "admin-token"  # noqa: S105 (a file name, not a secret)
SCHEMA_VERSION = 2
ENDPOINT_FLUSH_S = 0.02
LAZY_FLUSH_S = 1.0
FOREIGN_POLL_S = 0.05  # how soon a CLI write (peer remove, ...) reaches DNS and watchers
WATCH_LOG_LENGTH = 100_000
BUSY_TIMEOUT_MS = 10_000
MAX_TOKEN_LIFETIME_S = 10 * 365 * 86_400

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS networks (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    cidr TEXT NOT NULL,
    zone TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS peers (
    public_key BLOB PRIMARY KEY,
    network_id INTEGER NOT NULL REFERENCES networks(id),
    name TEXT NOT NULL,
    address TEXT NOT NULL,
    routes TEXT NOT NULL DEFAULT '[]',
    endpoint_host TEXT,
    endpoint_port INTEGER,
    endpoint_confirmed_at REAL,
    last_handshake REAL,
    handshake_timestamp BLOB NOT NULL DEFAULT x'',
    credential_hash BLOB UNIQUE,
    created_at REAL NOT NULL,
    pending_routes TEXT NOT NULL DEFAULT '[]',
    token_id TEXT,
    last_join_ms INTEGER NOT NULL DEFAULT 0,
    UNIQUE (network_id, name),
    UNIQUE (network_id, address)
);
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY,
    network_id INTEGER NOT NULL REFERENCES networks(id),
    secret_hash BLOB NOT NULL UNIQUE,
    uses_left INTEGER NOT NULL CHECK (uses_left >= 0),
    expires_at REAL NOT NULL,
    created_at REAL NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0,
    allowed_routes TEXT NOT NULL DEFAULT '[]',
    label TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS removed_keys (
    public_key BLOB PRIMARY KEY,
    last_join_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    public_key BLOB NOT NULL
);
"""
_PEER_COLUMNS = (
    "public_key, name, address, routes, endpoint_host, endpoint_port, "
    "endpoint_confirmed_at, last_handshake, handshake_timestamp, pending_routes"
)
# Schema 1 to 2: the columns of route grants and signed joins. Routes that peers merely claimed
# under schema 1 become requests the operator must approve.
_MIGRATIONS = (
    "ALTER TABLE peers ADD COLUMN pending_routes TEXT NOT NULL DEFAULT '[]'",
    "ALTER TABLE peers ADD COLUMN token_id TEXT",
    "ALTER TABLE peers ADD COLUMN last_join_ms INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE tokens ADD COLUMN allowed_routes TEXT NOT NULL DEFAULT '[]'",
    "ALTER TABLE tokens ADD COLUMN label TEXT NOT NULL DEFAULT ''",
    "UPDATE peers SET pending_routes = routes, routes = '[]'",
    # Tokens and credentials of schema 1 crossed plain HTTP (and credentials any proxy): void.
    "UPDATE tokens SET revoked = 1",
    "UPDATE peers SET credential_hash = NULL",
)

ChangeKind = Literal["added", "updated", "removed"]
Listener = Callable[[ChangeKind, Peer], None]


@dataclass(frozen=True, slots=True)
class Registration:
    peer: Peer
    credential: str
    created: bool  # False when the same key and name joined again (a retried join)
    join_keys: JoinKeys  # what seals the credential to the peer's key


@dataclass(frozen=True, slots=True)
class _TokenRow:
    token_id: str
    uses_left: int
    allowed_routes: tuple[IPNetwork, ...]


@dataclass(frozen=True, slots=True)
class WatchResult:
    epoch: str
    revision: int
    full: bool  # True: `peers` is every peer (the watcher was too far behind, or new)
    peers: list[Peer]
    removed: list[bytes]


@dataclass(slots=True)
class _WatchLog:
    epoch: str = field(default_factory=lambda: uuid.uuid4().hex)
    revision: int = 0
    entries: collections.deque[tuple[int, bytes]] = field(
        default_factory=lambda: collections.deque(maxlen=WATCH_LOG_LENGTH)
    )
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class Registry:
    """Open with `await Registry.open(data_dir)`; close with `await registry.close()`."""

    def __init__(self, db: aiosqlite.Connection, data_dir: Path) -> None:
        self._db = db
        self.data_dir = data_dir
        self.settings: config.Settings
        self.given: config.Overrides = config.Overrides()
        self.private_key: X25519PrivateKey
        self.public_key = b""
        self.tls_files: TlsFiles | None = None  # None: plain HTTP behind the operator's proxy
        self.tls_pin: str | None = None
        self._network_id = 0
        self._peers: dict[bytes, Peer] = {}
        self._by_name: dict[str, bytes] = {}
        self._by_credential: dict[bytes, bytes] = {}  # credential hash -> public key
        self._credential_of: dict[bytes, bytes] = {}  # public key -> credential hash
        self._listeners: list[Listener] = []
        self._write_lock = asyncio.Lock()
        self._next_address = 0
        self._seen_seq = 0
        self._data_version = -1
        self._dirty: set[bytes] = set()
        self._endpoint_moved = asyncio.Event()
        self._log = _WatchLog()
        self.damper = EndpointDamper()
        self.zone_serial: Callable[[], int] | None = None  # the DNS zone's, kept at each flush
        self.stored_zone_serial = 0
        self._closing = False
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
    ) -> Registry:
        """Open (or create) the data folder. `given` are serve's flags: stored for the other
        commands now, or with `store=False` only once `keep_settings()` says serving began
        (a serve that fails must change nothing `token create` reads). `served=True`: the
        folder must hold the settings of a serve (the admin commands), else InvalidInput."""
        if served and not (data_dir / DATABASE_NAME).exists():
            raise InvalidInput(_never_served(data_dir))
        _make_private_dir(data_dir)
        db = await aiosqlite.connect(
            data_dir / DATABASE_NAME, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000
        )
        try:
            os.chmod(data_dir / DATABASE_NAME, 0o600)  # it holds the rendezvous private key
            registry = cls(db, data_dir)
            await registry._prepare(given, store=store, served=served)
        except BaseException:
            await db.close()
            raise
        return registry

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        now = time.time()
        for key, endpoint in self.damper.drain():  # the newest seen, though still held
            peer = self._peers.get(key)
            if peer is not None:
                self._move(peer, endpoint, now)
        with contextlib.suppress(sqlite3.Error):
            await self.flush()
        await self._db.close()

    def start_background(self) -> None:
        """Serving only: write observations behind, and follow other processes' writes."""
        self._tasks.append(asyncio.create_task(self._flush_loop(), name="registry-flush"))
        self._tasks.append(asyncio.create_task(self._follow_loop(), name="registry-follow"))

    async def _prepare(self, given: config.Overrides | None, *, store: bool, served: bool) -> None:
        for pragma in (
            "PRAGMA journal_mode=WAL",
            "PRAGMA synchronous=FULL",
            f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}",
            "PRAGMA foreign_keys=ON",
        ):
            await self._db.execute(pragma)
        # Each CREATE ... IF NOT EXISTS is idempotent; tables of an older schema stay as they
        # are until _migrate brings them forward.
        await self._db.executescript(_SCHEMA)
        async with self._write() as db:
            meta = await _read_meta(db)
            if served and "settings" not in meta:
                raise InvalidInput(_never_served(self.data_dir))
            await _migrate(db, meta)
            stored = config.from_mapping(json.loads(meta.get("settings", "{}")))
            self.given = config.merge(given, stored) if given else stored
            self.settings = config.resolve(self.given)
            await self._store_settings(db, write=store)
            self.stored_zone_serial = int(meta.get("zone_serial", "0"))
            self.private_key = await self._load_or_make_key(db, meta)
            await self._ensure_admin_token(db, meta)
        self.public_key = public_bytes(self.private_key)
        self._prepare_tls()
        await self._load_peers()

    def _prepare_tls(self) -> None:
        settings = self.settings
        if settings.behind_tls_proxy:
            return
        if settings.tls_cert and settings.tls_key:
            self.tls_files = TlsFiles(Path(settings.tls_cert), Path(settings.tls_key))
        else:
            self.tls_files = ensure_self_signed(self.data_dir, settings.public_endpoint[0])
        self.tls_pin = read_pin(self.tls_files)

    async def keep_settings(self) -> None:
        """Serving began: from now on the other commands read these settings."""
        async with self._write() as db:
            await self._store_settings(db, write=True)

    async def _store_settings(self, db: aiosqlite.Connection, *, write: bool) -> None:
        rows = await db.execute_fetchall("SELECT id, cidr FROM networks WHERE name = 'default'")
        if not write and rows:
            self._network_id = int(next(iter(rows))[0])
            return
        if write:
            settings = json.dumps(config.to_mapping(self.given), sort_keys=True)
            await _set_meta(db, "settings", settings)
        network = str(self.settings.network)
        if not rows:
            cursor = await db.execute(
                "INSERT INTO networks (name, cidr, zone) VALUES ('default', ?, ?)",
                (network, self.settings.zone),
            )
            self._network_id = int(cursor.lastrowid or 0)
            return
        network_id, stored_cidr = next(iter(rows))
        self._network_id = int(network_id)
        if stored_cidr != network:
            count = await _count(db, "SELECT count(*) FROM peers WHERE network_id = ?", network_id)
            if count:
                raise InvalidInput(
                    f"the data folder's network is {stored_cidr} with {count} peers; "
                    f"remove them first or use a new --data-dir to move to {network}"
                )
        await db.execute(
            "UPDATE networks SET cidr = ?, zone = ? WHERE id = ?",
            (network, self.settings.zone, network_id),
        )

    async def _load_or_make_key(
        self, db: aiosqlite.Connection, meta: dict[str, str]
    ) -> X25519PrivateKey:
        if "private_key" in meta:
            raw = parse_key(meta["private_key"], "stored private key")
            return X25519PrivateKey.from_private_bytes(raw)
        key = X25519PrivateKey.generate()
        await _set_meta(db, "private_key", encode_key(key.private_bytes_raw()))
        return key

    async def _ensure_admin_token(self, db: aiosqlite.Connection, meta: dict[str, str]) -> None:
        """The admin API's bearer token: its hash in the database, the token in a 0600 file."""
        path = self.data_dir / ADMIN_TOKEN_NAME
        if "admin_hash" in meta and path.exists():
            return
        secret = secrets.token_urlsafe(32)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(secret + "\n")
        await _set_meta(db, "admin_hash", tokens.hash_secret(secret.encode()).hex())

    async def _load_peers(self) -> None:
        rows = await self._db.execute_fetchall(
            f"SELECT {_PEER_COLUMNS}, credential_hash FROM peers WHERE network_id = ?",  # noqa: S608
            (self._network_id,),
        )
        for row in rows:
            peer = _peer_from_row(row)
            self._remember(peer, row[-1])
        self._next_address = _after_highest(self._peers.values(), self.settings)
        self._seen_seq = await _count(self._db, "SELECT coalesce(max(seq), 0) FROM changes")
        self._data_version = await self._read_data_version()

    # -- reading ------------------------------------------------------------------------------

    def peers(self) -> list[Peer]:
        return sorted(self._peers.values(), key=lambda peer: peer.name)

    def all_peers(self) -> list[Peer]:
        """Every peer, in no particular order (cheaper than `peers()` at 100,000)."""
        return list(self._peers.values())

    def with_endpoint(self) -> int:
        return sum(1 for peer in self._peers.values() if peer.endpoint is not None)

    def peer(self, public_key: bytes) -> Peer | None:
        return self._peers.get(public_key)

    def __len__(self) -> int:
        return len(self._peers)

    def find(self, name_or_key: str) -> Peer:
        key = self._by_name.get(name_or_key)
        if key is None:
            with contextlib.suppress(InvalidInput):
                key = parse_key(name_or_key)
        peer = self._peers.get(key) if key else None
        if peer is None:
            raise NotFound(f"no peer named or keyed {name_or_key!r}; `rendezvous peers` lists them")
        return peer

    def authenticate(self, credential: str) -> Peer | None:
        key = self._by_credential.get(tokens.hash_secret(credential.encode()))
        return self._peers.get(key) if key else None

    async def is_admin(self, secret: str) -> bool:
        meta = await _read_meta(self._db)
        expected = meta.get("admin_hash", "")
        return secrets.compare_digest(tokens.hash_secret(secret.encode()).hex(), expected)

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

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
        if not 1 <= uses <= 1_000_000:
            raise InvalidInput("--uses must be between 1 and 1000000")
        if not 0 < lifetime_s <= MAX_TOKEN_LIFETIME_S:
            raise InvalidInput("--expires must be at most 10 years")
        now = time.time() if now is None else now
        join_token = tokens.JoinToken(
            self.settings.public_api_url, tokens.new_secret(), self.public_key, self.tls_pin
        )
        secret_hash = join_token.secret_hash
        async with self._write() as db:
            await db.execute(
                "INSERT INTO tokens (id, network_id, secret_hash, uses_left, expires_at, "
                "created_at, allowed_routes, label) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    tokens.token_id(secret_hash),
                    self._network_id,
                    secret_hash,
                    uses,
                    now + lifetime_s,
                    now,
                    _routes_text(allowed_routes),
                    label,
                ),
            )
        return join_token.encode()

    async def list_tokens(self) -> list[Token]:
        rows = await self._db.execute_fetchall(
            "SELECT id, uses_left, expires_at, created_at, revoked, allowed_routes, label "
            "FROM tokens "
            "WHERE network_id = ? ORDER BY created_at",
            (self._network_id,),
        )
        return [
            Token(row[0], row[1], row[2], row[3], bool(row[4]), _routes_from_text(row[5]), row[6])
            for row in rows
        ]

    async def revoke_token(self, token_id: str) -> None:
        async with self._write() as db:
            cursor = await db.execute(
                "UPDATE tokens SET revoked = 1 WHERE id = ? AND network_id = ?",
                (token_id, self._network_id),
            )
            if cursor.rowcount == 0:
                raise NotFound(f"no token {token_id!r}; `rendezvous token list` shows them")

    # -- joining and leaving ------------------------------------------------------------------

    async def join(self, request: JoinRequest, now: float | None = None) -> Registration:
        """Register the peer whose private key signed `request`; durable before it returns.

        A registered key joins again only with a newer signed time (a join retried after a lost
        answer, a machine that lost its credential): it keeps its address, gets a new
        credential, and spends no use of the token it first joined with."""
        now = time.time() if now is None else now
        requested = parse_routes(
            list(request.routes), self.settings.network, self.settings.own_addresses
        )
        secret_hash = tokens.decode(request.token).secret_hash
        self._check_new_key(request.public_key)
        keys = verify_join(request, self.private_key)
        async with self._write() as db:
            token = await self._usable_token(db, secret_hash, now)
            existing = await self._existing_peer(db, request.public_key, request.name)
            if existing is None:
                peer = await self._join_new(db, request, token, requested, now)
            else:
                peer = await self._join_again(db, request, token, existing, requested)
            credential = await self._new_credential(db, request.public_key)
        self._apply_own(peer, credential)
        return Registration(peer, credential, existing is None, keys)

    async def _join_new(
        self,
        db: aiosqlite.Connection,
        request: JoinRequest,
        token: _TokenRow,
        requested: tuple[IPNetwork, ...],
        now: float,
    ) -> Peer:
        if request.time_ms <= await self._removed_join_ms(db, request.public_key):
            raise ProofRejected("this join is not newer than the last one of this key (a replay)")
        granted, pending = split_grant(requested, token.allowed_routes)
        self._check_routes_free(request.public_key, granted)
        if token.uses_left <= 0:
            raise TokenRejected("this join token is used up; make a new one")
        await db.execute(
            "UPDATE tokens SET uses_left = uses_left - 1 WHERE id = ?", (token.token_id,)
        )
        peer = await self._insert_peer(db, request.public_key, request.name, granted, now, pending)
        await db.execute(
            "UPDATE peers SET token_id = ?, last_join_ms = ? WHERE public_key = ?",
            (token.token_id, request.time_ms, request.public_key),
        )
        return peer

    async def _join_again(
        self,
        db: aiosqlite.Connection,
        request: JoinRequest,
        token: _TokenRow,
        existing: Peer,
        requested: tuple[IPNetwork, ...],
    ) -> Peer:
        joined_with, last_join_ms = await self._join_record(db, request.public_key)
        if request.time_ms <= last_join_ms:
            raise ProofRejected(
                "this join is not newer than the last one of this key (a replay, or this "
                "machine's clock went back)"
            )
        if token.uses_left <= 0 and token.token_id != joined_with:
            raise TokenRejected("this join token is used up; make a new one")
        # Grants already given stay given. A token grants routes only to the new machine it
        # admits: to a member joining again, what is new waits for the operator (else a spent
        # token would undo a revocation, and a member could take a token's grant unspent).
        kept = tuple(route for route in requested if route in existing.routes)
        pending = tuple(route for route in requested if route not in kept)
        peer = replace(existing, routes=kept, pending_routes=pending)
        await db.execute(
            "UPDATE peers SET routes = ?, pending_routes = ?, last_join_ms = ? "
            "WHERE public_key = ?",
            (_routes_text(peer.routes), _routes_text(pending), request.time_ms, peer.public_key),
        )
        await _log_change(db, peer.public_key)
        return peer

    async def _removed_join_ms(self, db: aiosqlite.Connection, public_key: bytes) -> int:
        """The last join time of a removed key: a captured join must not bring it back."""
        rows = list(
            await db.execute_fetchall(
                "SELECT last_join_ms FROM removed_keys WHERE public_key = ?", (public_key,)
            )
        )
        return int(rows[0][0]) if rows else 0

    async def _join_record(self, db: aiosqlite.Connection, public_key: bytes) -> tuple[str, int]:
        rows = list(
            await db.execute_fetchall(
                "SELECT coalesce(token_id, ''), last_join_ms FROM peers WHERE public_key = ?",
                (public_key,),
            )
        )
        return str(rows[0][0]), int(rows[0][1])

    async def add_peer(
        self, public_key: bytes, name: str, routes: tuple[Any, ...] = (), now: float | None = None
    ) -> Peer:
        """Register a peer by hand (no token): a phone or a box that cannot run the agent.
        The operator adds it, so its routes are granted."""
        now = time.time() if now is None else now
        self._check_new_key(public_key)
        async with self._write() as db:
            if await self._existing_peer(db, public_key, name) is not None:
                raise Conflict(f"this key is already registered as {name!r}")
            self._check_routes_free(public_key, routes)
            peer = await self._insert_peer(db, public_key, name, routes, now)
        self._apply_own(peer, None)
        return peer

    async def grant_routes(
        self, name_or_key: str, routes: tuple[IPNetwork, ...] | None = None
    ) -> Peer:
        """The operator grants routes to a peer: the given ones, or all it asked for."""
        async with self._write() as db:
            await self._catch_up(db)
            peer = self.find(name_or_key)
            wanted = peer.pending_routes if routes is None else routes
            for route in wanted:
                check_route(route, self.settings.network, self.settings.own_addresses)
            added = tuple(route for route in wanted if route not in peer.routes)
            check_carried(peer.routes + added)
            self._check_routes_free(peer.public_key, added)
            pending = tuple(route for route in peer.pending_routes if route not in wanted)
            peer = await self._set_routes(db, peer, peer.routes + added, pending)
        self._apply_own(peer, None)
        return peer

    async def revoke_routes(self, name_or_key: str, routes: tuple[IPNetwork, ...]) -> Peer:
        """Take routes from a peer, granted or pending; agents remove them within a second."""
        async with self._write() as db:
            await self._catch_up(db)
            peer = self.find(name_or_key)
            kept = tuple(route for route in peer.routes if route not in routes)
            pending = tuple(route for route in peer.pending_routes if route not in routes)
            peer = await self._set_routes(db, peer, kept, pending)
        self._apply_own(peer, None)
        return peer

    async def _set_routes(
        self,
        db: aiosqlite.Connection,
        peer: Peer,
        routes: tuple[IPNetwork, ...],
        pending: tuple[IPNetwork, ...],
    ) -> Peer:
        await db.execute(
            "UPDATE peers SET routes = ?, pending_routes = ? WHERE public_key = ?",
            (_routes_text(routes), _routes_text(pending), peer.public_key),
        )
        await _log_change(db, peer.public_key)
        return replace(peer, routes=routes, pending_routes=pending)

    async def add_peers(
        self, entries: list[tuple[bytes, str]], now: float | None = None
    ) -> list[Peer]:
        """Register many peers by hand in one transaction (all or none): an import, a benchmark."""
        now = time.time() if now is None else now
        for public_key, _ in entries:
            self._check_new_key(public_key)
        async with self._write() as db:
            added = [await self._insert_peer(db, key, name, (), now) for key, name in entries]
        for peer in added:
            self._apply_own(peer, None)
        return added

    async def remove_peer(self, name_or_key: str) -> Peer:
        async with self._write() as db:
            await self._catch_up(db)
            peer = self.find(name_or_key)
            await db.execute(
                "INSERT OR REPLACE INTO removed_keys (public_key, last_join_ms) "
                "SELECT public_key, last_join_ms FROM peers WHERE public_key = ?",
                (peer.public_key,),
            )
            await db.execute("DELETE FROM peers WHERE public_key = ?", (peer.public_key,))
            await _log_change(db, peer.public_key)
        self._forget(peer.public_key)
        return peer

    def _check_new_key(self, public_key: bytes) -> None:
        if public_key == self.public_key:
            raise InvalidInput("that is the rendezvous's own public key, not the peer's")
        try:
            self.private_key.exchange(X25519PublicKey.from_public_bytes(public_key))
        except ValueError:
            # A low-order point: every handshake with it would give an all-zero secret.
            raise InvalidInput("that public key is not a usable X25519 key") from None

    async def _usable_token(
        self, db: aiosqlite.Connection, secret_hash: bytes, now: float
    ) -> _TokenRow:
        rows = list(
            await db.execute_fetchall(
                "SELECT id, uses_left, expires_at, revoked, allowed_routes FROM tokens "
                "WHERE secret_hash = ? AND network_id = ?",
                (secret_hash, self._network_id),
            )
        )
        if not rows:
            raise TokenRejected("this join token is unknown here; make one with `token create`")
        token_id, uses_left, expires_at, revoked, allowed = rows[0]
        if revoked:
            raise TokenRejected("this join token was revoked; make a new one")
        if expires_at <= now:
            raise TokenRejected("this join token has expired; make a new one")
        return _TokenRow(str(token_id), int(uses_left), _routes_from_text(allowed))

    async def _existing_peer(
        self, db: aiosqlite.Connection, public_key: bytes, name: str
    ) -> Peer | None:
        rows = list(
            await db.execute_fetchall(
                f"SELECT {_PEER_COLUMNS} FROM peers WHERE public_key = ?",  # noqa: S608
                (public_key,),
            )
        )
        if not rows:
            return None
        peer = _peer_from_row(rows[0])
        if peer.name != name:
            raise Conflict(f"this key is already registered as {peer.name!r}")
        return self._peers.get(public_key, peer)

    def _check_routes_free(self, public_key: bytes, routes: Iterable[Any]) -> None:
        for route in routes:
            for other in self._peers.values():
                if other.public_key == public_key:
                    continue
                for taken in other.routes:
                    if route.version == taken.version and route.overlaps(taken):
                        raise Conflict(
                            f"route {route} overlaps {taken}, advertised by {other.name}"
                        )

    async def _insert_peer(
        self,
        db: aiosqlite.Connection,
        public_key: bytes,
        name: str,
        routes: tuple[Any, ...],
        now: float,
        pending: tuple[IPNetwork, ...] = (),
    ) -> Peer:
        address = await self._allocate_address(db)
        try:
            await db.execute(
                "INSERT INTO peers (public_key, network_id, name, address, routes, created_at, "
                "pending_routes) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    public_key,
                    self._network_id,
                    name,
                    str(address),
                    _routes_text(routes),
                    now,
                    _routes_text(pending),
                ),
            )
        except sqlite3.IntegrityError:
            raise Conflict(f"the name {name!r} is taken by another peer; choose another") from None
        await _log_change(db, public_key)
        return Peer(public_key, name, address, routes, pending_routes=pending)

    async def _allocate_address(self, db: aiosqlite.Connection) -> IPAddress:
        """Next fit: the first free address after the last one given, wrapping around.

        Freed addresses come back, but only after the others: a peer that still routes to a
        removed one does not reach a newcomer at once."""
        first, last = _host_range(self.settings)
        size = last - first + 1
        start = min(max(self._next_address, first), last)
        for step in range(size):
            candidate = first + (start - first + step) % size
            address = ipaddress.ip_address(candidate)
            taken = await _count(
                db,
                "SELECT count(*) FROM peers WHERE network_id = ? AND address = ?",
                self._network_id,
                str(address),
            )
            if not taken:
                self._next_address = candidate + 1
                return address
        raise Conflict(f"the network {self.settings.network} is full; remove peers or widen it")

    async def _new_credential(self, db: aiosqlite.Connection, public_key: bytes) -> str:
        credential = secrets.token_urlsafe(32)
        await db.execute(
            "UPDATE peers SET credential_hash = ? WHERE public_key = ?",
            (tokens.hash_secret(credential.encode()), public_key),
        )
        return credential

    # -- what the responder observes ----------------------------------------------------------

    def observe_handshake(self, public_key: bytes, timestamp: bytes, now: float) -> None:
        peer = self._peers.get(public_key)
        if peer is None:
            return
        self._peers[public_key] = replace(peer, last_handshake=now, handshake_timestamp=timestamp)
        self._dirty.add(public_key)

    def observe_endpoint(self, public_key: bytes, source: Endpoint, now: float) -> None:
        """An authenticated keepalive came from `source`: that is the peer's NAT mapping.
        Published at once, or after the damper's hold when the peer moved a moment ago."""
        peer = self._peers.get(public_key)
        if peer is not None and self.damper.observe(public_key, source, peer.endpoint, now):
            self._move(peer, source, now)

    def _move(self, peer: Peer, endpoint: Endpoint, now: float) -> None:
        moved = replace(peer, endpoint=endpoint, endpoint_confirmed_at=now)
        self._peers[peer.public_key] = moved
        self._dirty.add(peer.public_key)
        self._endpoint_moved.set()
        self._publish("updated", moved)

    def publish_held_endpoints(self, now: float) -> None:
        for key, endpoint in self.damper.due(now):
            peer = self._peers.get(key)
            if peer is not None and peer.endpoint != endpoint:
                self._move(peer, endpoint, now)

    async def flush(self) -> None:
        """Write observed endpoints and handshakes (the replay floor survives a restart), and
        the zone's serial (it never goes backwards, even across a restart)."""
        serial = self.zone_serial() if self.zone_serial else self.stored_zone_serial
        if not self._dirty and serial == self.stored_zone_serial:
            return
        dirty, self._dirty = self._dirty, set()
        rows = [_observation_row(self._peers[key]) for key in dirty if key in self._peers]
        async with self._write() as db:
            await db.executemany(
                "UPDATE peers SET endpoint_host = ?, endpoint_port = ?, endpoint_confirmed_at = ?,"
                " last_handshake = ?, handshake_timestamp = ? WHERE public_key = ?",
                rows,
            )
            if serial != self.stored_zone_serial:
                await _set_meta(db, "zone_serial", str(serial))
        self.stored_zone_serial = serial

    async def _flush_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._endpoint_moved.wait(), LAZY_FLUSH_S)
                await asyncio.sleep(ENDPOINT_FLUSH_S)  # let a burst of moves share one commit
            self._endpoint_moved.clear()
            self.publish_held_endpoints(time.time())
            try:
                await self.flush()
            except sqlite3.Error as error:
                logger.warning("could not write observations yet (%s); retrying", error)

    # -- other processes' writes --------------------------------------------------------------

    async def _follow_loop(self) -> None:
        while True:
            await asyncio.sleep(FOREIGN_POLL_S)
            try:
                await self.sync()
            except sqlite3.Error as error:
                logger.warning("could not read the registry (%s); retrying", error)

    async def sync(self) -> None:
        """Apply what other processes committed since we last looked."""
        version = await self._read_data_version()
        if version == self._data_version:
            return
        self._data_version = version
        async with self._write_lock:
            await self._catch_up(self._db)

    async def _read_data_version(self) -> int:
        return await _count(self._db, "PRAGMA data_version")

    async def _catch_up(self, db: aiosqlite.Connection) -> None:
        rows = await db.execute_fetchall(
            "SELECT seq, public_key FROM changes WHERE seq > ? ORDER BY seq", (self._seen_seq,)
        )
        keys: dict[bytes, None] = {}
        for seq, key in rows:
            self._seen_seq = max(self._seen_seq, int(seq))
            keys[bytes(key)] = None
        for key in keys:
            await self._reload(db, key)

    async def _reload(self, db: aiosqlite.Connection, public_key: bytes) -> None:
        rows = list(
            await db.execute_fetchall(
                f"SELECT {_PEER_COLUMNS}, credential_hash FROM peers "  # noqa: S608
                "WHERE public_key = ? AND network_id = ?",
                (public_key, self._network_id),
            )
        )
        if not rows:
            self._forget(public_key)
            return
        stored = _peer_from_row(rows[0])
        known = self._peers.get(public_key)
        # Only the serving process observes endpoints: keep ours, take the rest from disk.
        merged = (
            replace(
                known,
                name=stored.name,
                address=stored.address,
                routes=stored.routes,
                pending_routes=stored.pending_routes,
            )
            if known
            else stored
        )
        self._remember(merged, rows[0][-1])

    # -- the watch API ------------------------------------------------------------------------

    @property
    def epoch(self) -> str:
        return self._log.epoch

    @property
    def revision(self) -> int:
        return self._log.revision

    async def watch(self, epoch: str | None, since: int | None, timeout_s: float) -> WatchResult:
        """Changes after revision `since` of `epoch`, waiting up to `timeout_s` for one; at
        once when the registry is closing. A full answer's peers are in no particular order."""
        log = self._log
        if epoch == log.epoch and since == log.revision and not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(log.changed.wait(), timeout_s)
                if not self._closing:
                    await asyncio.sleep(WATCH_COALESCE_S)  # a burst of changes: one answer
        oldest = log.entries[0][0] if log.entries else log.revision + 1
        if epoch != log.epoch or since is None or since > log.revision or since < oldest - 1:
            return WatchResult(log.epoch, log.revision, True, list(self._peers.values()), [])
        # Revisions in the log are consecutive: the newest `revision - since` entries are new.
        newer = itertools.islice(reversed(log.entries), log.revision - since)
        changed = dict.fromkeys(reversed([key for _, key in newer]))
        peers = [self._peers[key] for key in changed if key in self._peers]
        removed = [key for key in changed if key not in self._peers]
        return WatchResult(log.epoch, log.revision, False, peers, removed)

    def stop_watchers(self) -> None:
        """Answer every waiting watch now (a stopping server must not wait for long polls)."""
        self._closing = True
        self._log.changed.set()

    # -- in-memory bookkeeping ----------------------------------------------------------------

    def _apply_own(self, peer: Peer, credential: str | None) -> None:
        """Our own committed write; a None credential keeps the peer's current one."""
        if credential is None:
            credential_hash = self._credential_of.get(peer.public_key)
        else:
            credential_hash = tokens.hash_secret(credential.encode())
        self._remember(peer, credential_hash)

    def _remember(self, peer: Peer, credential_hash: bytes | None) -> None:
        known = self._peers.get(peer.public_key)
        if known is not None and self._by_name.get(known.name) == peer.public_key:
            del self._by_name[known.name]
        self._drop_credential(peer.public_key)
        self._peers[peer.public_key] = peer
        self._by_name[peer.name] = peer.public_key
        if credential_hash:
            self._by_credential[bytes(credential_hash)] = peer.public_key
            self._credential_of[peer.public_key] = bytes(credential_hash)
        if known != peer:
            self._publish("added" if known is None else "updated", peer)

    def _forget(self, public_key: bytes) -> None:
        peer = self._peers.pop(public_key, None)
        if peer is None:
            return
        if self._by_name.get(peer.name) == public_key:
            del self._by_name[peer.name]
        self._drop_credential(public_key)
        self._dirty.discard(public_key)
        self.damper.forget(public_key)
        self._publish("removed", peer)

    def _drop_credential(self, public_key: bytes) -> None:
        stale = self._credential_of.pop(public_key, None)
        if stale is not None:
            self._by_credential.pop(stale, None)

    def _publish(self, kind: ChangeKind, peer: Peer) -> None:
        log = self._log
        log.revision += 1
        log.entries.append((log.revision, peer.public_key))
        log.changed.set()
        log.changed = asyncio.Event()
        for listener in self._listeners:
            listener(kind, peer)

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction; SQLite's lock orders it against other processes."""
        async with self._write_lock:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                await self._db.execute("ROLLBACK")
                raise
            await self._db.execute("COMMIT")


def _never_served(data_dir: Path) -> str:
    return (
        f"{data_dir} has never served: start `rendezvous serve` first (it makes the "
        "rendezvous's identity and keeps its settings), or pass the --data-dir it uses"
    )


def _make_private_dir(path: Path) -> None:
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as error:
        raise InvalidInput(
            f"cannot use data folder {path}: {error.strerror}; pass --data-dir"
        ) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise InvalidInput(f"cannot write to data folder {path}; pass --data-dir or fix its owner")


async def _migrate(db: aiosqlite.Connection, meta: dict[str, str]) -> None:
    """Bring an older data folder to SCHEMA_VERSION, inside the opening transaction."""
    version = int(meta.get("schema", SCHEMA_VERSION))  # no schema yet: a new data folder
    if version > SCHEMA_VERSION:
        raise InvalidInput(
            f"the data folder was written by a newer rendezvous (schema {version}); upgrade"
        )
    if version == 1:
        for statement in _MIGRATIONS:
            await db.execute(statement)
        logger.warning(
            "upgraded to TLS: join tokens and peers' credentials from before are void (make "
            "new tokens; agents join again), and routes peers claimed are requests now (grant "
            "each with `rendezvous peer routes approve NAME`)"
        )
    if version != SCHEMA_VERSION or "schema" not in meta:
        await _set_meta(db, "schema", str(SCHEMA_VERSION))


async def _read_meta(db: aiosqlite.Connection) -> dict[str, str]:
    rows = await db.execute_fetchall("SELECT key, value FROM meta")
    return {str(key): str(value) for key, value in rows}


async def _set_meta(db: aiosqlite.Connection, key: str, value: str) -> None:
    await db.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


async def _count(db: aiosqlite.Connection, sql: str, *parameters: object) -> int:
    rows = list(await db.execute_fetchall(sql, parameters))
    return int(rows[0][0]) if rows else 0


async def _log_change(db: aiosqlite.Connection, public_key: bytes) -> None:
    await db.execute("INSERT INTO changes (public_key) VALUES (?)", (public_key,))


def _routes_text(routes: Iterable[Any]) -> str:
    return json.dumps([str(route) for route in routes])


def _routes_from_text(text: str) -> tuple[IPNetwork, ...]:
    return tuple(parse_cidr(route, "stored route") for route in json.loads(text))


def _peer_from_row(row: Any) -> Peer:
    key, name, address, routes, host, port, confirmed_at, handshake, timestamp, pending = row[:10]
    return Peer(
        public_key=bytes(key),
        name=str(name),
        address=ipaddress.ip_address(address),
        routes=_routes_from_text(routes),
        pending_routes=_routes_from_text(pending),
        endpoint=(str(host), int(port)) if host is not None and port is not None else None,
        endpoint_confirmed_at=confirmed_at,
        last_handshake=handshake,
        handshake_timestamp=bytes(timestamp),
    )


def _observation_row(peer: Peer) -> tuple[object, ...]:
    host, port = peer.endpoint if peer.endpoint else (None, None)
    return (
        host,
        port,
        peer.endpoint_confirmed_at,
        peer.last_handshake,
        peer.handshake_timestamp,
        peer.public_key,
    )


def _host_range(settings: config.Settings) -> tuple[int, int]:
    """Peers get addresses after the rendezvous's own (the first host) and before broadcast."""
    network = settings.network
    return int(settings.rendezvous_address) + 1, int(network.broadcast_address) - 1


def _after_highest(peers: Iterable[Peer], settings: config.Settings) -> int:
    addresses = [int(peer.address) for peer in peers if peer.address in settings.network]
    return max(addresses) + 1 if addresses else _host_range(settings)[0]
