"""A private PostgreSQL cluster from Debian's postgresql 15 package, for the tests (through the
pytest plugin tests/postgres.py) and the benchmarks (bench/instances.py, bench/scale.py).

The cluster listens on a unix socket in its own folder only (no TCP port to collide with), runs
as the `postgres` user when we are root (initdb refuses root), and is removed, data and all,
when `private_cluster()` ends, also on Ctrl-C. No pytest here: a benchmark imports it too.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg

POSTGRES_BIN = Path("/usr/lib/postgresql/15/bin")
CLUSTER_USER = "postgres"  # the Debian package's system user
NO_TCP = "-c listen_addresses=''"
# Speed only: fsync guards against the machine crashing, which no test does (a killed
# rendezvous loses nothing PostgreSQL acknowledged either way).
TEST_OPTIONS = f"{NO_TCP} -c fsync=off -c full_page_writes=off"


class ClusterError(RuntimeError):
    """The cluster could not start or stop; the message says what PostgreSQL said."""


class Cluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket_dir = root / "socket"
        self.data_dir = root / "data"
        self._numbers = itertools.count(1)

    def url(self, database: str) -> str:
        return f"postgresql:///{database}?host={self.socket_dir}&user={CLUSTER_USER}"

    def postmaster_pid(self) -> int:
        """The server's first process; every other one of the cluster is its child."""
        return int((self.data_dir / "postmaster.pid").read_text().split()[0])

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
        said = result.stderr.strip() or result.stdout.strip()
        raise ClusterError(f"{Path(command[0]).name} failed: {said}")


def start(root: Path, options: str = TEST_OPTIONS) -> Cluster:
    """initdb and start a cluster in the empty folder `root` (given to the cluster's user)."""
    cluster = initdb(root)
    options = f"{options} -k {cluster.socket_dir}"
    _run([str(POSTGRES_BIN / "pg_ctl"), "-D", str(cluster.data_dir), "-l",
          str(root / "server.log"), "-o", options, "-w", "start"])  # fmt: skip
    return cluster


def initdb(root: Path) -> Cluster:
    """A cluster's files in the empty folder `root` (given to the cluster's user), not started:
    `start` starts it here, a lab host in its own network namespace (tests/lab/database.py)."""
    if not (POSTGRES_BIN / "initdb").exists():
        raise ClusterError("PostgreSQL 15 is not installed: run tests/setup (package postgresql)")
    cluster = Cluster(root)
    cluster.socket_dir.mkdir()
    if os.geteuid() == 0:
        owner = pwd.getpwnam(CLUSTER_USER)
        for path in (root, cluster.socket_dir):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    _run([str(POSTGRES_BIN / "initdb"), "-D", str(cluster.data_dir), "-U", CLUSTER_USER,
          "-A", "trust", "-E", "UTF8", "--no-sync"])  # fmt: skip
    return cluster


def stop(root: Path) -> None:
    """Stop the cluster in `root` if it runs ("immediate": nothing in it is kept anyway)."""
    data = root / "data"
    if (data / "postmaster.pid").exists():
        _run([str(POSTGRES_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"])


@contextlib.contextmanager
def private_cluster(options: str = TEST_OPTIONS) -> Iterator[Cluster]:
    """A cluster in a new temporary folder, stopped and removed when the block ends however it
    ends (an exception, Ctrl-C's KeyboardInterrupt)."""
    root = Path(tempfile.mkdtemp(prefix="meshpeer-pg-"))
    try:
        yield start(root, options)
    finally:
        try:
            stop(root)
        finally:
            shutil.rmtree(root, ignore_errors=True)
