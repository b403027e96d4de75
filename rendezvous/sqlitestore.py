"""The registry's store in SQLite (WAL), the engine behind storage.py's interfaces.

One process serves; the admin CLI writes to the same file from others. Every write is one
`BEGIN IMMEDIATE` transaction, so SQLite orders writers across processes, and commits with
`synchronous=FULL`: what a transaction wrote survives a crash once the `async with` ends.
Other processes' writes show in `PRAGMA data_version` and in the `changes` table.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiosqlite

from meshpeer.common.endpoints import Endpoint, IPAddress, IPNetwork

from . import sqlschema
from .model import Conflict, Peer, Token
from .storage import JoinRecord, ServingInstance, StoredPeer, StoredToken, StoreFailure
from .storedrows import (
    PEER_COLUMNS,
    endpoints_text,
    observation_row,
    partners_text,
    routes_from_text,
    routes_text,
    stored_peer,
)
from .timers import FOREIGN_POLL_S, SQLITE_BUSY_TIMEOUT_S


@contextlib.contextmanager
def _failures() -> Iterator[None]:
    """SQLite's errors leave the engine as the store's one failure, whatever the engine."""
    try:
        yield
    except sqlite3.Error as error:
        raise StoreFailure(f"the data folder's database failed: {error}") from error


class _SqliteReader:
    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db
        self.network_id = 0

    async def _rows(self, sql: str, *parameters: object) -> list[Any]:
        return list(await self._db.execute_fetchall(sql, parameters))

    async def _number(self, sql: str, *parameters: object) -> int:
        rows = await self._rows(sql, *parameters)
        return int(rows[0][0]) if rows else 0

    async def read_meta(self) -> dict[str, str]:
        with _failures():
            rows = await self._rows("SELECT key, value FROM meta")
        return {str(key): str(value) for key, value in rows}

    async def changes_since(self, seq: int) -> list[tuple[int, bytes]]:
        rows = await self._rows(
            "SELECT seq, public_key FROM changes WHERE seq > ? ORDER BY seq", seq
        )
        return [(int(number), bytes(key)) for number, key in rows]

    async def stored_peer(self, public_key: bytes) -> StoredPeer | None:
        rows = await self._rows(
            f"SELECT {PEER_COLUMNS} FROM peers WHERE public_key = ? AND network_id = ?",  # noqa: S608
            public_key,
            self.network_id,
        )
        return stored_peer(rows[0]) if rows else None


class SqliteTransaction(_SqliteReader):
    async def set_meta(self, key: str, value: str) -> None:
        await self._db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    async def upgrade_schema(self, meta: dict[str, str]) -> None:
        if await sqlschema.upgrade(self._db, meta):
            await self.set_meta("schema", str(sqlschema.SCHEMA_VERSION))

    async def default_network(self) -> tuple[int, str] | None:
        rows = await self._rows("SELECT id, cidr FROM networks WHERE name = 'default'")
        return (int(rows[0][0]), str(rows[0][1])) if rows else None

    async def add_network(self, cidr: str, zone: str) -> int:
        cursor = await self._db.execute(
            "INSERT INTO networks (name, cidr, zone) VALUES ('default', ?, ?)", (cidr, zone)
        )
        return int(cursor.lastrowid or 0)

    async def update_network(self, network_id: int, cidr: str, zone: str) -> None:
        await self._db.execute(
            "UPDATE networks SET cidr = ?, zone = ? WHERE id = ?", (cidr, zone, network_id)
        )

    async def peer_count(self, network_id: int) -> int:
        return await self._number("SELECT count(*) FROM peers WHERE network_id = ?", network_id)

    async def other_live_instances(self, own_id: str, live_s: float) -> int:
        return await self._number(sqlschema.OTHER_LIVE_INSTANCES, own_id, live_s)

    async def insert_token(self, token: Token, secret_hash: bytes) -> None:
        await self._db.execute(
            "INSERT INTO tokens (id, network_id, secret_hash, uses_left, expires_at, "
            "created_at, allowed_routes, label) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                token.token_id,
                self.network_id,
                secret_hash,
                token.uses_left,
                token.expires_at,
                token.created_at,
                routes_text(token.allowed_routes),
                token.label,
            ),
        )

    async def revoke_token(self, token_id: str) -> bool:
        cursor = await self._db.execute(
            "UPDATE tokens SET revoked = 1 WHERE id = ? AND network_id = ?",
            (token_id, self.network_id),
        )
        return cursor.rowcount > 0

    async def token_by_secret(self, secret_hash: bytes) -> StoredToken | None:
        rows = await self._rows(
            "SELECT id, uses_left, expires_at, revoked, allowed_routes FROM tokens "
            "WHERE secret_hash = ? AND network_id = ?",
            secret_hash,
            self.network_id,
        )
        if not rows:
            return None
        token_id, uses_left, expires_at, revoked, allowed = rows[0]
        return StoredToken(
            str(token_id), int(uses_left), expires_at, bool(revoked), routes_from_text(allowed)
        )

    async def spend_token_use(self, token_id: str) -> None:
        # The CHECK (uses_left >= 0) stops a second spender of the last use, should one race.
        await self._db.execute(
            "UPDATE tokens SET uses_left = uses_left - 1 WHERE id = ?", (token_id,)
        )

    async def removed_join_ms(self, public_key: bytes) -> int:
        return await self._number(
            "SELECT last_join_ms FROM removed_keys WHERE public_key = ?", public_key
        )

    async def join_record(self, public_key: bytes) -> JoinRecord:
        rows = await self._rows(
            "SELECT coalesce(token_id, ''), last_join_ms FROM peers WHERE public_key = ?",
            public_key,
        )
        return JoinRecord(str(rows[0][0]), int(rows[0][1]))

    async def record_join(self, public_key: bytes, token_id: str | None, time_ms: int) -> None:
        await self._db.execute(
            "UPDATE peers SET token_id = coalesce(?, token_id), last_join_ms = ? "
            "WHERE public_key = ?",
            (token_id, time_ms, public_key),
        )

    async def address_taken(self, address: IPAddress) -> bool:
        taken = await self._number(
            "SELECT count(*) FROM peers WHERE network_id = ? AND address = ?",
            self.network_id,
            str(address),
        )
        return taken > 0

    async def insert_peer(self, peer: Peer, created_at: float) -> None:
        try:
            await self._db.execute(
                "INSERT INTO peers (public_key, network_id, name, address, routes, created_at, "
                "pending_routes) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    peer.public_key,
                    self.network_id,
                    peer.name,
                    str(peer.address),
                    routes_text(peer.routes),
                    created_at,
                    routes_text(peer.pending_routes),
                ),
            )
        except sqlite3.IntegrityError:
            raise Conflict(
                f"the name {peer.name!r} is taken by another peer; choose another"
            ) from None
        await self._log_change(peer.public_key)

    async def set_routes(
        self, public_key: bytes, routes: tuple[IPNetwork, ...], pending: tuple[IPNetwork, ...]
    ) -> None:
        await self._db.execute(
            "UPDATE peers SET routes = ?, pending_routes = ? WHERE public_key = ?",
            (routes_text(routes), routes_text(pending), public_key),
        )
        await self._log_change(public_key)

    async def set_relay_partners(self, public_key: bytes, partners: tuple[bytes, ...]) -> None:
        await self._db.execute(
            "UPDATE peers SET relay_partners = ? WHERE public_key = ?",
            (partners_text(partners), public_key),
        )
        await self._log_change(public_key)

    async def set_lan_endpoints(self, public_key: bytes, endpoints: tuple[Endpoint, ...]) -> None:
        await self._db.execute(
            "UPDATE peers SET lan_endpoints = ? WHERE public_key = ?",
            (endpoints_text(endpoints), public_key),
        )
        await self._log_change(public_key)

    async def set_credential_hash(self, public_key: bytes, credential_hash: bytes) -> None:
        await self._db.execute(
            "UPDATE peers SET credential_hash = ? WHERE public_key = ?",
            (credential_hash, public_key),
        )

    async def delete_peer(self, public_key: bytes) -> None:
        await self._db.execute(
            "INSERT OR REPLACE INTO removed_keys (public_key, last_join_ms) "
            "SELECT public_key, last_join_ms FROM peers WHERE public_key = ?",
            (public_key,),
        )
        await self._db.execute("DELETE FROM peers WHERE public_key = ?", (public_key,))
        await self._log_change(public_key)

    async def write_observations(self, peers: list[Peer], moved: list[Peer]) -> None:
        # One serving process: its endpoint is the only one, and the CLI reads it from here.
        await self._db.executemany(
            "UPDATE peers SET endpoint_host = ?, endpoint_port = ?, endpoint_confirmed_at = ?,"
            " last_handshake = ?, handshake_timestamp = ? WHERE public_key = ?",
            [observation_row(peer) for peer in peers],
        )

    async def _log_change(self, public_key: bytes) -> None:
        """Other processes learn of the change from here (see `changes_since`)."""
        await self._db.execute("INSERT INTO changes (public_key) VALUES (?)", (public_key,))


class SqliteStore(_SqliteReader):
    """Open with `await SqliteStore.open(path)`; the file is private (it holds the key)."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        super().__init__(db)
        self._transaction = SqliteTransaction(db)
        self._lock = asyncio.Lock()  # one connection: a transaction at a time in this process

    @classmethod
    async def open(cls, path: Path) -> SqliteStore:
        with _failures():
            db = await aiosqlite.connect(path, isolation_level=None, timeout=SQLITE_BUSY_TIMEOUT_S)
            try:
                os.chmod(path, 0o600)  # it holds the rendezvous private key
                await _prepare(db)
            except BaseException:
                await db.close()
                raise
        return cls(db)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[SqliteTransaction]:
        """One write transaction; SQLite's lock orders it against other processes."""
        with _failures():
            async with self._lock:
                self._transaction.network_id = self.network_id
                await self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._transaction
                except BaseException:
                    await self._db.execute("ROLLBACK")
                    raise
                await self._db.execute("COMMIT")

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[SqliteTransaction]:
        with _failures():
            async with self._lock:
                self._transaction.network_id = self.network_id
                yield self._transaction

    async def load_peers(self) -> list[StoredPeer]:
        with _failures():
            rows = await self._rows(
                f"SELECT {PEER_COLUMNS} FROM peers WHERE network_id = ?",  # noqa: S608
                self.network_id,
            )
        return [stored_peer(row) for row in rows]

    async def list_tokens(self) -> list[Token]:
        with _failures():
            rows = await self._rows(
                "SELECT id, uses_left, expires_at, created_at, revoked, allowed_routes, label "
                "FROM tokens WHERE network_id = ? ORDER BY created_at",
                self.network_id,
            )
        return [
            Token(row[0], row[1], row[2], row[3], bool(row[4]), routes_from_text(row[5]), row[6])
            for row in rows
        ]

    async def latest_change(self) -> int:
        with _failures():
            return await self._number("SELECT coalesce(max(seq), 0) FROM changes")

    async def commit_marker(self) -> int:
        with _failures():
            return await self._number("PRAGMA data_version")

    async def follow_changes(self, nudge: Callable[[], None]) -> None:
        """Polled: the commit marker is cheap to read, and SQLite cannot announce a commit."""
        while True:
            await asyncio.sleep(FOREIGN_POLL_S)
            nudge()

    async def beat_instance(
        self, own: ServingInstance, live_s: float, limit: int
    ) -> list[ServingInstance]:
        async with self.transaction():
            await self._db.execute(sqlschema.BEAT_INSTANCE, _instance_row(own))
            rows = await self._rows(sqlschema.LIVE_INSTANCES, live_s, own.instance_id, limit)
        return [ServingInstance(*map(str, row)) for row in rows]

    async def retire_instance(self, instance_id: str) -> None:
        async with self.transaction():
            await self._db.execute("DELETE FROM instances WHERE id = ?", (instance_id,))

    async def tidy(self, forget_instances_after_s: float) -> int:
        async with self.transaction():
            changes = await self._db.execute(sqlschema.COMPACT_CHANGES)
            instances = await self._db.execute(
                sqlschema.FORGET_INSTANCES, (forget_instances_after_s,)
            )
        return changes.rowcount + instances.rowcount

    async def close(self) -> None:
        await self._db.close()


def _instance_row(instance: ServingInstance) -> tuple[str, str, str, str]:
    return (instance.instance_id, instance.api_url, instance.endpoint, instance.dns)


async def _prepare(db: aiosqlite.Connection) -> None:
    busy_ms = int(SQLITE_BUSY_TIMEOUT_S * 1000)
    for pragma in (
        "PRAGMA journal_mode=WAL",
        "PRAGMA synchronous=FULL",
        f"PRAGMA busy_timeout={busy_ms}",
        "PRAGMA foreign_keys=ON",
    ):
        await db.execute(pragma)
    await db.executescript(sqlschema.SCHEMA)
