"""The PostgreSQL tables of a registry shared by several rendezvous, created at the current
schema directly (no older PostgreSQL registry exists to bring forward).

The tables mirror SQLite's schema 4 (sqlschema.py) in PostgreSQL's types, plus `change_clock`:
one row whose counter numbers the changes, so that they commit in the order of their numbers
(pgstore.py says why that matters to the processes following them).
"""

from __future__ import annotations

import asyncpg

from meshpeer.common.errors import InvalidInput

# PostgreSQL's own schema counter, apart from SQLite's: the two engines migrate separately.
SCHEMA_VERSION = 1

# Two instances starting at once would race on CREATE TABLE IF NOT EXISTS (it is not atomic
# against a concurrent creator): the schema is created under this transaction-scoped lock.
SCHEMA_LOCK_ID = 0x6D657368  # "mesh"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE IF NOT EXISTS networks (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL UNIQUE,
    cidr text NOT NULL,
    zone text NOT NULL
);
CREATE TABLE IF NOT EXISTS peers (
    public_key bytea PRIMARY KEY,
    network_id bigint NOT NULL REFERENCES networks(id),
    name text NOT NULL,
    address text NOT NULL,
    routes text NOT NULL DEFAULT '[]',
    endpoint_host text,
    endpoint_port integer,
    endpoint_confirmed_at double precision,
    last_handshake double precision,
    handshake_timestamp bytea NOT NULL DEFAULT ''::bytea,
    credential_hash bytea UNIQUE,
    created_at double precision NOT NULL,
    pending_routes text NOT NULL DEFAULT '[]',
    token_id text,
    last_join_ms bigint NOT NULL DEFAULT 0,
    relay_partners text NOT NULL DEFAULT '[]',
    lan_endpoints text NOT NULL DEFAULT '[]',
    UNIQUE (network_id, name),
    UNIQUE (network_id, address)
);
CREATE TABLE IF NOT EXISTS tokens (
    id text PRIMARY KEY,
    network_id bigint NOT NULL REFERENCES networks(id),
    secret_hash bytea NOT NULL UNIQUE,
    uses_left integer NOT NULL CHECK (uses_left >= 0),
    expires_at double precision NOT NULL,
    created_at double precision NOT NULL,
    revoked boolean NOT NULL DEFAULT false,
    allowed_routes text NOT NULL DEFAULT '[]',
    label text NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS removed_keys (
    public_key bytea PRIMARY KEY,
    last_join_ms bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS changes (
    seq bigint PRIMARY KEY,
    public_key bytea NOT NULL
);
CREATE TABLE IF NOT EXISTS change_clock (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    seq bigint NOT NULL
);
INSERT INTO change_clock (seq) VALUES (0) ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS instances (
    id text PRIMARY KEY,
    api_url text NOT NULL,
    endpoint text NOT NULL,
    dns text NOT NULL,
    started_at timestamptz NOT NULL,
    heartbeat_at timestamptz NOT NULL
);
"""
# The instances table came after schema 1 without a new version: it is created in an existing
# database by the CREATE above, and an instance not yet upgraded ignores it (a new version
# would make it refuse the database in the middle of a rolling upgrade).

BEAT_INSTANCE = """
INSERT INTO instances (id, api_url, endpoint, dns, started_at, heartbeat_at)
VALUES ($1, $2, $3, $4, clock_timestamp(), clock_timestamp())
ON CONFLICT (id) DO UPDATE SET api_url = excluded.api_url, endpoint = excluded.endpoint,
    dns = excluded.dns, heartbeat_at = excluded.heartbeat_at
"""
# One statement, so one transaction: the change log keeps each key's latest row, and instances
# not stamped for $1 seconds leave the list; the rows deleted.
TIDY = """
WITH compacted AS (
    -- Against each key's latest: a self-join on "a newer row exists" made k*k/2 pairs for a
    -- key with k rows (8,000 rows of one key: 15 s).
    DELETE FROM changes older
    USING (SELECT public_key, max(seq) AS latest FROM changes GROUP BY public_key) newest
    WHERE older.public_key = newest.public_key AND older.seq < newest.latest RETURNING 1
), forgotten AS (
    DELETE FROM instances
    WHERE heartbeat_at < clock_timestamp() - make_interval(secs => $1) RETURNING 1
)
SELECT (SELECT count(*) FROM compacted) + (SELECT count(*) FROM forgotten)
"""
# Numbers the changes $1 (in their order) with one update of the clock row, and announces them.
# One update for all: every update of the row within a transaction leaves a version that the
# next one steps over until commit, so one update per change made a transaction of n changes
# cost O(n^2) (64,000 moves in one flush: 31 s, 0.5 ms each at the end). The empty payload
# makes a transaction's announcements one: PostgreSQL folds identical notifications.
LOG_CHANGES = """
WITH tick AS (UPDATE change_clock SET seq = seq + cardinality($1::bytea[]) RETURNING seq),
logged AS (
    INSERT INTO changes (seq, public_key)
    SELECT tick.seq - cardinality($1::bytea[]) + changed.n, changed.public_key
    FROM tick, unnest($1::bytea[]) WITH ORDINALITY AS changed(public_key, n)
    RETURNING seq
)
SELECT pg_notify($2, '') WHERE EXISTS (SELECT 1 FROM logged)
"""
OTHER_LIVE_INSTANCES = """
SELECT count(*) FROM instances
WHERE id <> $1 AND heartbeat_at > clock_timestamp() - make_interval(secs => $2)
"""
LIVE_INSTANCES = """
SELECT id, api_url, endpoint, dns FROM instances
WHERE heartbeat_at > clock_timestamp() - make_interval(secs => $2)
ORDER BY id = $1 DESC, started_at, id LIMIT $3
"""


def needs_version(meta: dict[str, str]) -> bool:
    """True when the schema's version must be written; InvalidInput if a newer one wrote it."""
    version = int(meta.get("schema", SCHEMA_VERSION))  # no version yet: a new database
    if version > SCHEMA_VERSION:
        raise InvalidInput(
            f"the database was written by a newer rendezvous (PostgreSQL schema {version}); "
            "upgrade this one"
        )
    return version != SCHEMA_VERSION or "schema" not in meta


async def create(pool: asyncpg.Pool) -> None:
    """The tables, at this version, whoever else starts at the same time."""
    async with pool.acquire() as connection, connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK_ID)
        await connection.execute(SCHEMA)
