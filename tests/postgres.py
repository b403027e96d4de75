"""pytest plugin: a private PostgreSQL cluster (Debian's postgresql 15) for the registry's tests
on the PostgreSQL engine, and the `open_registry` fixture that runs a test on both engines.

One cluster per session (tests/pgcluster.py: a unix socket in its own folder only, run as the
`postgres` user, removed at the end); each test gets fresh databases. It fails, never skips,
when the cluster cannot start: a PostgreSQL test that does not run must not look like one that
passed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from meshpeer.rendezvous import settings as config
from meshpeer.rendezvous.registry import Registry
from tests.pgcluster import Cluster, ClusterError, private_cluster


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[Cluster]:
    try:
        with private_cluster() as cluster:
            yield cluster
    except ClusterError as error:
        pytest.fail(str(error))


class RegistryOpener(Protocol):
    """`Registry.open` on the engine under test: one database per data folder."""

    async def __call__(
        self, data_dir: Path, given: config.Overrides | None = None, **options: Any
    ) -> Registry: ...

    def database(self, data_dir: Path) -> str | None: ...


class _SqliteOpener:
    async def __call__(
        self, data_dir: Path, given: config.Overrides | None = None, **options: Any
    ) -> Registry:
        return await Registry.open(data_dir, given, **options)

    def database(self, data_dir: Path) -> str | None:
        return None


class _PostgresOpener:
    def __init__(self, cluster: Cluster) -> None:
        self._cluster = cluster
        self._databases: dict[Path, str] = {}

    async def __call__(
        self, data_dir: Path, given: config.Overrides | None = None, **options: Any
    ) -> Registry:
        if data_dir not in self._databases:
            self._databases[data_dir] = await self._cluster.new_database()
        return await Registry.open(data_dir, given, database=self._databases[data_dir], **options)

    def database(self, data_dir: Path) -> str | None:
        return self._databases.get(data_dir)


@pytest.fixture(params=["sqlite", "postgresql"])
def open_registry(request: pytest.FixtureRequest) -> Iterator[RegistryOpener]:
    if request.param == "sqlite":
        yield _SqliteOpener()
        return
    cluster: Cluster = request.getfixturevalue("postgres_cluster")
    yield _PostgresOpener(cluster)
    asyncio.run(cluster.drop_databases())
