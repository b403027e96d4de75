"""pytest plugin: a private PostgreSQL cluster (Debian's postgresql 15) for the registry's tests
on the PostgreSQL engine, and the `open_registry` fixture that runs a test on both engines.

One cluster per session, listening on a unix socket in its own folder only (no TCP port to
collide with), started as the `postgres` user when the tests run as root (initdb refuses root)
and removed at the end; each test gets fresh databases. It fails, never skips, when the cluster
cannot start: a PostgreSQL test that does not run must not look like one that passed.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import asyncpg
import pytest

from meshpeer.rendezvous import settings as config
from meshpeer.rendezvous.registry import Registry

POSTGRES_BIN = Path("/usr/lib/postgresql/15/bin")
CLUSTER_USER = "postgres"  # the Debian package's system user
# Speed only: fsync guards against the machine crashing, which no test does (a killed
# rendezvous loses nothing PostgreSQL acknowledged either way).
SERVER_OPTIONS = "-c listen_addresses='' -c fsync=off -c full_page_writes=off"


class Cluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket_dir = root / "socket"
        self._numbers = itertools.count(1)

    def url(self, database: str) -> str:
        return f"postgresql:///{database}?host={self.socket_dir}&user={CLUSTER_USER}"

    async def new_database(self) -> str:
        name = f"registry_{os.getpid()}_{next(self._numbers)}"
        admin = await asyncpg.connect(self.url("postgres"))
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        return self.url(name)

    async def drop_databases(self) -> None:
        admin = await asyncpg.connect(self.url("postgres"))
        try:
            names = await admin.fetch(
                "SELECT datname FROM pg_database WHERE datname LIKE 'registry_%'"
            )
            for (name,) in names:
                await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        finally:
            await admin.close()


def _as_cluster_user(command: list[str]) -> list[str]:
    return ["runuser", "-u", CLUSTER_USER, "--", *command] if os.geteuid() == 0 else command


def _run(command: list[str]) -> None:
    result = subprocess.run(_as_cluster_user(command), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.fail(f"{command[0]} failed: {result.stderr.strip() or result.stdout.strip()}")


def _start(root: Path) -> Cluster:
    if not (POSTGRES_BIN / "initdb").exists():
        pytest.fail("PostgreSQL 15 is not installed: run tests/setup (Debian package postgresql)")
    cluster = Cluster(root)
    cluster.socket_dir.mkdir()
    if os.geteuid() == 0:
        owner = pwd.getpwnam(CLUSTER_USER)
        for path in (root, cluster.socket_dir):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    data = root / "data"
    _run([str(POSTGRES_BIN / "initdb"), "-D", str(data), "-U", CLUSTER_USER, "-A", "trust",
          "-E", "UTF8", "--no-sync"])  # fmt: skip
    options = f"{SERVER_OPTIONS} -k {cluster.socket_dir}"
    _run([str(POSTGRES_BIN / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"),
          "-o", options, "-w", "start"])  # fmt: skip
    return cluster


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[Cluster]:
    root = Path(tempfile.mkdtemp(prefix="meshpeer-pg-"))
    try:
        cluster = _start(root)
        yield cluster
    finally:
        if (root / "data" / "postmaster.pid").exists():
            _run(
                [str(POSTGRES_BIN / "pg_ctl"), "-D", str(root / "data"), "-m", "immediate", "stop"]
            )
        shutil.rmtree(root, ignore_errors=True)


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
