"""The SQLite tables of a data folder, and the steps that bring an older folder forward."""

from __future__ import annotations

import logging

import aiosqlite

from meshpeer.common.errors import InvalidInput

logger = logging.getLogger("meshpeer.rendezvous.registry")

SCHEMA_VERSION = 5

# Each CREATE ... IF NOT EXISTS is idempotent; tables of an older schema stay as they are until
# `upgrade` brings them forward.
SCHEMA = """
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
    relay_partners TEXT NOT NULL DEFAULT '[]',
    lan_endpoints TEXT NOT NULL DEFAULT '[]',
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
CREATE TABLE IF NOT EXISTS instances (
    id TEXT PRIMARY KEY,
    api_url TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    dns TEXT NOT NULL,
    started_at REAL NOT NULL,
    heartbeat_at REAL NOT NULL
);
"""
# The database's clock in Unix seconds (julianday: any SQLite version has it), as PostgreSQL's.
BEAT_INSTANCE = """
INSERT INTO instances (id, api_url, endpoint, dns, started_at, heartbeat_at)
VALUES (?, ?, ?, ?, (julianday('now') - 2440587.5) * 86400.0,
    (julianday('now') - 2440587.5) * 86400.0)
ON CONFLICT (id) DO UPDATE SET api_url = excluded.api_url, endpoint = excluded.endpoint,
    dns = excluded.dns, heartbeat_at = excluded.heartbeat_at
"""
COMPACT_CHANGES = """
DELETE FROM changes WHERE seq NOT IN (SELECT max(seq) FROM changes GROUP BY public_key)
"""
FORGET_INSTANCES = """
DELETE FROM instances WHERE heartbeat_at < (julianday('now') - 2440587.5) * 86400.0 - ?
"""
OTHER_LIVE_INSTANCES = """
SELECT count(*) FROM instances
WHERE id <> ? AND heartbeat_at > (julianday('now') - 2440587.5) * 86400.0 - ?
"""
LIVE_INSTANCES = """
SELECT id, api_url, endpoint, dns FROM instances
WHERE heartbeat_at > (julianday('now') - 2440587.5) * 86400.0 - ?
ORDER BY id = ? DESC, started_at, id LIMIT ?
"""

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
# Schema 2 to 3: the peers each peer reaches through the relay.
_RELAY_MIGRATIONS = ("ALTER TABLE peers ADD COLUMN relay_partners TEXT NOT NULL DEFAULT '[]'",)
# Schema 3 to 4: the LAN endpoints each peer reports of itself.
_LAN_MIGRATIONS = ("ALTER TABLE peers ADD COLUMN lan_endpoints TEXT NOT NULL DEFAULT '[]'",)
# Schema 4 to 5: the serving instances' list, a new table SCHEMA creates in an older folder too.


async def upgrade(db: aiosqlite.Connection, meta: dict[str, str]) -> bool:
    """Bring an older data folder to SCHEMA_VERSION, inside the opening transaction; True when
    the schema's version must be written."""
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
    if version in (1, 2):
        for statement in _RELAY_MIGRATIONS:
            await db.execute(statement)
    if version in (1, 2, 3):
        for statement in _LAN_MIGRATIONS:
            await db.execute(statement)
    return version != SCHEMA_VERSION or "schema" not in meta
