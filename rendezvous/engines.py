"""Which engine holds the registry: SQLite in the data folder (the default, one host), or the
PostgreSQL server that `--database postgresql://...` (RENDEZVOUS_DATABASE) names, shared by
several rendezvous."""

from __future__ import annotations

import os
from pathlib import Path

from .datadir import DATABASE_NAME
from .pgstore import PgStore
from .sqlitestore import SqliteStore
from .storage import Store

DATABASE_VARIABLE = "RENDEZVOUS_DATABASE"


def database_from(flag: str | None, environ: dict[str, str] | None = None) -> str | None:
    """The flag, else the environment's; None: SQLite in the data folder."""
    environ = dict(os.environ) if environ is None else environ
    return flag or environ.get(DATABASE_VARIABLE) or None


async def open_store(data_dir: Path, database: str | None) -> Store:
    if database is None:
        return await SqliteStore.open(data_dir / DATABASE_NAME)
    return await PgStore.open(database)
