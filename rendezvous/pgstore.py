"""The registry's store in PostgreSQL (asyncpg), the engine behind storage.py's interfaces for
several rendezvous sharing one database.

Transactions run at READ COMMITTED and take row locks (SELECT ... FOR UPDATE) where two
writers could decide on the same row, rather than SERIALIZABLE: a serialization failure must be
answered by running the whole transaction again, and a transaction here is the registry's own
code inside `async with store.transaction()`, which a context manager cannot replay. So:
- a join reads its token FOR UPDATE: a second join for the last use waits for the first to
  commit, then reads the spent row and is refused (exactly one winner);
- an address is allocated under the network's row lock, so two instances never offer the same
  one (the UNIQUE (network_id, address) stays as the last guard);
- every change takes the next number from the one `change_clock` row, whose lock is held until
  commit: changes commit in the order of their numbers. A plain sequence would not do that, and a
  follower that read change 6 before change 5 committed would never see 5.
A transaction is committed when its `async with` ends (PostgreSQL's synchronous_commit, on by
default, makes that durable), so a join is acknowledged only after it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import asyncpg

from meshpeer.common.endpoints import Endpoint, IPAddress, IPNetwork

from . import pglisten, pgschema
from .model import Conflict, Peer, Token
from .pgconnect import CONNECTION_ERRORS, connect_pool, one_line
from .storage import JoinRecord, ServingInstance, StoredPeer, StoredToken, StoreFailure
from .storedrows import (
    PEER_COLUMNS,
    endpoints_text,
    partners_text,
    routes_from_text,
    routes_text,
    stored_peer,
)


@contextlib.contextmanager
def _failures() -> Iterator[None]:
    """PostgreSQL's errors leave the engine as the store's one failure, on one line."""
    try:
        yield
    except asyncpg.PostgresError as error:
        raise StoreFailure(f"the PostgreSQL registry failed: {one_line(error)}") from error
    except CONNECTION_ERRORS as error:
        raise StoreFailure(f"lost the PostgreSQL registry: {one_line(error)}") from error


class _PgReader:
    def __init__(self, db: Any) -> None:
        self._db = db  # a pool (reads outside a transaction) or a connection inside one
        self.network_id = 0

    async def read_meta(self) -> dict[str, str]:
        with _failures():
            rows = await self._db.fetch("SELECT key, value FROM meta")
        return {str(key): str(value) for key, value in rows}

    async def changes_since(self, seq: int) -> list[tuple[int, bytes]]:
        with _failures():
            rows = await self._db.fetch(
                "SELECT seq, public_key FROM changes WHERE seq > $1 ORDER BY seq", seq
            )
        return [(int(number), bytes(key)) for number, key in rows]

    async def stored_peer(self, public_key: bytes) -> StoredPeer | None:
        with _failures():
            row = await self._db.fetchrow(
                f"SELECT {PEER_COLUMNS} FROM peers WHERE public_key = $1 AND network_id = $2",  # noqa: S608
                public_key,
                self.network_id,
            )
        return stored_peer(row) if row is not None else None


class PgTransaction(_PgReader):
    async def set_meta(self, key: str, value: str) -> None:
        await self._db.execute(
            "INSERT INTO meta (key, value) VALUES ($1, $2) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            key,
            value,
        )

    async def upgrade_schema(self, meta: dict[str, str]) -> None:
        if pgschema.needs_version(meta):
            await self.set_meta("schema", str(pgschema.SCHEMA_VERSION))

    async def default_network(self) -> tuple[int, str] | None:
        row = await self._db.fetchrow("SELECT id, cidr FROM networks WHERE name = 'default'")
        return (int(row[0]), str(row[1])) if row is not None else None

    async def add_network(self, cidr: str, zone: str) -> int:
        # Another instance may have added it since default_network() said there was none.
        network_id = await self._db.fetchval(
            "INSERT INTO networks (name, cidr, zone) VALUES ('default', $1, $2) "
            "ON CONFLICT (name) DO UPDATE SET name = excluded.name RETURNING id",
            cidr,
            zone,
        )
        return int(network_id)

    async def update_network(self, network_id: int, cidr: str, zone: str) -> None:
        await self._db.execute(
            "UPDATE networks SET cidr = $1, zone = $2 WHERE id = $3", cidr, zone, network_id
        )

    async def peer_count(self, network_id: int) -> int:
        count = await self._db.fetchval(
            "SELECT count(*) FROM peers WHERE network_id = $1", network_id
        )
        return int(count)

    async def other_live_instances(self, own_id: str, live_s: float) -> int:
        count = await self._db.fetchval(pgschema.OTHER_LIVE_INSTANCES, own_id, live_s)
        return int(count)

    async def insert_token(self, token: Token, secret_hash: bytes) -> None:
        await self._db.execute(
            "INSERT INTO tokens (id, network_id, secret_hash, uses_left, expires_at, "
            "created_at, allowed_routes, label) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            token.token_id,
            self.network_id,
            secret_hash,
            token.uses_left,
            token.expires_at,
            token.created_at,
            routes_text(token.allowed_routes),
            token.label,
        )

    async def revoke_token(self, token_id: str) -> bool:
        status = await self._db.execute(
            "UPDATE tokens SET revoked = true WHERE id = $1 AND network_id = $2",
            token_id,
            self.network_id,
        )
        return str(status) != "UPDATE 0"

    async def token_by_secret(self, secret_hash: bytes) -> StoredToken | None:
        # FOR UPDATE: the join that reads the token holds it until it commits (module docstring).
        row = await self._db.fetchrow(
            "SELECT id, uses_left, expires_at, revoked, allowed_routes FROM tokens "
            "WHERE secret_hash = $1 AND network_id = $2 FOR UPDATE",
            secret_hash,
            self.network_id,
        )
        if row is None:
            return None
        token_id, uses_left, expires_at, revoked, allowed = row
        return StoredToken(
            str(token_id), int(uses_left), expires_at, revoked, routes_from_text(allowed)
        )

    async def spend_token_use(self, token_id: str) -> None:
        await self._db.execute(
            "UPDATE tokens SET uses_left = uses_left - 1 WHERE id = $1", token_id
        )

    async def removed_join_ms(self, public_key: bytes) -> int:
        found = await self._db.fetchval(
            "SELECT last_join_ms FROM removed_keys WHERE public_key = $1", public_key
        )
        return int(found or 0)

    async def join_record(self, public_key: bytes) -> JoinRecord:
        row = await self._db.fetchrow(
            "SELECT coalesce(token_id, ''), last_join_ms FROM peers WHERE public_key = $1",
            public_key,
        )
        return JoinRecord(str(row[0]), int(row[1]))

    async def record_join(self, public_key: bytes, token_id: str | None, time_ms: int) -> None:
        await self._db.execute(
            "UPDATE peers SET token_id = coalesce($1, token_id), last_join_ms = $2 "
            "WHERE public_key = $3",
            token_id,
            time_ms,
            public_key,
        )

    async def address_taken(self, address: IPAddress) -> bool:
        # The network's row lock orders allocators across instances (module docstring).
        await self._db.execute("SELECT 1 FROM networks WHERE id = $1 FOR UPDATE", self.network_id)
        taken = await self._db.fetchval(
            "SELECT EXISTS (SELECT 1 FROM peers WHERE network_id = $1 AND address = $2)",
            self.network_id,
            str(address),
        )
        return bool(taken)

    async def insert_peer(self, peer: Peer, created_at: float) -> None:
        try:
            await self._db.execute(
                "INSERT INTO peers (public_key, network_id, name, address, routes, created_at, "
                "pending_routes) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                peer.public_key,
                self.network_id,
                peer.name,
                str(peer.address),
                routes_text(peer.routes),
                created_at,
                routes_text(peer.pending_routes),
            )
        except asyncpg.UniqueViolationError:
            raise Conflict(
                f"the name {peer.name!r} is taken by another peer; choose another"
            ) from None
        await self._log_change(peer.public_key)

    async def set_routes(
        self, public_key: bytes, routes: tuple[IPNetwork, ...], pending: tuple[IPNetwork, ...]
    ) -> None:
        await self._db.execute(
            "UPDATE peers SET routes = $1, pending_routes = $2 WHERE public_key = $3",
            routes_text(routes),
            routes_text(pending),
            public_key,
        )
        await self._log_change(public_key)

    async def set_relay_partners(self, public_key: bytes, partners: tuple[bytes, ...]) -> None:
        await self._db.execute(
            "UPDATE peers SET relay_partners = $1 WHERE public_key = $2",
            partners_text(partners),
            public_key,
        )
        await self._log_change(public_key)

    async def set_lan_endpoints(self, public_key: bytes, endpoints: tuple[Endpoint, ...]) -> None:
        await self._db.execute(
            "UPDATE peers SET lan_endpoints = $1 WHERE public_key = $2",
            endpoints_text(endpoints),
            public_key,
        )
        await self._log_change(public_key)

    async def set_credential_hash(self, public_key: bytes, credential_hash: bytes) -> None:
        await self._db.execute(
            "UPDATE peers SET credential_hash = $1 WHERE public_key = $2",
            credential_hash,
            public_key,
        )

    async def delete_peer(self, public_key: bytes) -> None:
        await self._db.execute(
            "INSERT INTO removed_keys (public_key, last_join_ms) "
            "SELECT public_key, last_join_ms FROM peers WHERE public_key = $1 "
            "ON CONFLICT (public_key) DO UPDATE SET last_join_ms = excluded.last_join_ms",
            public_key,
        )
        await self._db.execute("DELETE FROM peers WHERE public_key = $1", public_key)
        await self._log_change(public_key)

    async def write_observations(self, peers: list[Peer], moved: list[Peer]) -> None:
        # Another instance may have seen a later handshake: times and floors never go back.
        await self._db.executemany(
            "UPDATE peers SET last_handshake = greatest(last_handshake, $1), "
            "handshake_timestamp = greatest(handshake_timestamp, $2) WHERE public_key = $3",
            [(peer.last_handshake, peer.handshake_timestamp, peer.public_key) for peer in peers],
        )
        if moved:
            await self._write_moves(moved)

    async def _write_moves(self, moved: list[Peer]) -> None:
        """The latest confirmed endpoint wins; every move is logged, won or lost (storage.py)."""
        rows = [(peer.public_key, *(peer.endpoint or (None, None))) for peer in moved]
        await self._db.execute(
            "UPDATE peers AS p SET endpoint_host = o.host, endpoint_port = o.port, "
            "endpoint_confirmed_at = o.confirmed FROM unnest($1::bytea[], $2::text[], "
            "$3::integer[], $4::float8[]) AS o(public_key, host, port, confirmed) "
            "WHERE p.public_key = o.public_key "
            "AND coalesce(p.endpoint_confirmed_at, 0) < o.confirmed",
            [key for key, _host, _port in rows],
            [host for _key, host, _port in rows],
            [port for _key, _host, port in rows],
            [peer.endpoint_confirmed_at for peer in moved],
        )
        await self._log_changes([peer.public_key for peer in moved])

    async def _log_change(self, public_key: bytes) -> None:
        await self._log_changes([public_key])

    async def _log_changes(self, public_keys: list[bytes]) -> None:
        """Number the changes from the clock row, locked until commit (module docstring), and
        announce them at commit, in one statement (pgschema.LOG_CHANGES says why)."""
        await self._db.execute(pgschema.LOG_CHANGES, public_keys, pglisten.CHANNEL)


class PgStore(_PgReader):
    """Open with `await PgStore.open(url)`; the URL is the operator's `--database`."""

    def __init__(self, pool: asyncpg.Pool, url: str) -> None:
        super().__init__(pool)
        self._pool = pool
        self._url = url  # the listening connection is opened apart from the pool
        # As SQLite's engine: this process's transactions, and its catch-up reads, one at a time.
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, url: str) -> PgStore:
        pool = await connect_pool(url)
        try:
            with _failures():
                await pgschema.create(pool)
        except BaseException:
            await pool.close()
            raise
        return cls(pool, url)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[PgTransaction]:
        """One write transaction, committed when the `async with` ends."""
        with _failures():
            async with self._lock, self._pool.acquire() as connection, connection.transaction():
                writer = PgTransaction(connection)
                writer.network_id = self.network_id
                yield writer

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[PgTransaction]:
        """Reads from one snapshot, so a catch-up sees each change with the rows it changed."""
        with _failures():
            async with (
                self._lock,
                self._pool.acquire() as connection,
                connection.transaction(isolation="repeatable_read", readonly=True),
            ):
                reader = PgTransaction(connection)
                reader.network_id = self.network_id
                yield reader

    async def load_peers(self) -> list[StoredPeer]:
        with _failures():
            rows = await self._pool.fetch(
                f"SELECT {PEER_COLUMNS} FROM peers WHERE network_id = $1",  # noqa: S608
                self.network_id,
            )
        return [stored_peer(row) for row in rows]

    async def list_tokens(self) -> list[Token]:
        with _failures():
            rows = await self._pool.fetch(
                "SELECT id, uses_left, expires_at, created_at, revoked, allowed_routes, label "
                "FROM tokens WHERE network_id = $1 ORDER BY created_at",
                self.network_id,
            )
        return [
            Token(row[0], row[1], row[2], row[3], row[4], routes_from_text(row[5]), row[6])
            for row in rows
        ]

    async def latest_change(self) -> int:
        with _failures():
            return int(await self._pool.fetchval("SELECT seq FROM change_clock"))

    async def commit_marker(self) -> int:
        """The change clock: it moves with every committed change of any instance (what a
        follower acts on); observations, which log no change, leave it as it is."""
        return await self.latest_change()

    async def follow_changes(self, nudge: Callable[[], None]) -> None:
        """Announced: every change's transaction sends NOTIFY (pglisten.py)."""
        await pglisten.follow_notifications(self._url, nudge)

    async def beat_instance(
        self, own: ServingInstance, live_s: float, limit: int
    ) -> list[ServingInstance]:
        row = (own.instance_id, own.api_url, own.endpoint, own.dns)
        # Apart from the lock of peer changes: the list is no change a follower acts on.
        with _failures():
            async with self._pool.acquire() as connection, connection.transaction():
                await connection.execute(pgschema.BEAT_INSTANCE, *row)
                found = await connection.fetch(
                    pgschema.LIVE_INSTANCES, own.instance_id, live_s, limit
                )
        return [ServingInstance(*map(str, record)) for record in found]

    async def retire_instance(self, instance_id: str) -> None:
        with _failures():
            await self._pool.execute("DELETE FROM instances WHERE id = $1", instance_id)

    async def tidy(self, forget_instances_after_s: float) -> int:
        with _failures():
            return int(await self._pool.fetchval(pgschema.TIDY, forget_instances_after_s))

    async def close(self) -> None:
        with contextlib.suppress(*CONNECTION_ERRORS, asyncpg.PostgresError):
            await self._pool.close()
