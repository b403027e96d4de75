"""PostgreSQL's costliest statements (pg_stat_statements) for a benchmark's report: where the
database's time went, which the CPU share alone does not say."""

from __future__ import annotations

import asyncpg

WITH_STATEMENTS = "-c shared_preload_libraries=pg_stat_statements"  # --pg-top only
TOP_STATEMENTS = """
SELECT calls, total_exec_time, rows, query FROM pg_stat_statements
WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
ORDER BY total_exec_time DESC LIMIT $1
"""


async def count_statements(url: str) -> None:
    """From now on: what registering cost is left out."""
    connection = await asyncpg.connect(url)
    try:
        await connection.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        await connection.execute("SELECT pg_stat_statements_reset()")
    finally:
        await connection.close()


async def top_statements(url: str, count: int) -> list[str]:
    connection = await asyncpg.connect(url)
    try:
        rows = await connection.fetch(TOP_STATEMENTS, count)
    finally:
        await connection.close()
    return [
        f"{total_ms / 1000:6.1f} s in {calls:9,} calls ({total_ms * 1000 / calls:5.0f} us each), "
        f"{rows:9,} rows: {' '.join(query.split())[:100]}"
        for calls, total_ms, rows, query in rows
    ]
