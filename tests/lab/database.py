"""PostgreSQL on a lab host, reached over TCP at the host's address: the database host of a
deployment with several rendezvous (issue 18), across the lab's internet as a real one is."""

from __future__ import annotations

from tests.pgcluster import CLUSTER_USER, POSTGRES_BIN, initdb

from .topology import INTERNET, Host
from .wait import wait_until

PORT = 5432


def serve_postgres(host: Host) -> str:
    """PostgreSQL on `host`, its files in the host's lab folder (gone with the lab), listening
    on the host's address only and trusting the lab's internet alone; the URL of a new
    database on it."""
    root = host.dir / "postgres"
    root.mkdir(parents=True)
    cluster = initdb(root)
    with (cluster.data_dir / "pg_hba.conf").open("a") as rules:
        rules.write(f"host all all {INTERNET} trust\n")
    address = str(host.address)
    server = [str(POSTGRES_BIN / "postgres"), "-D", str(cluster.data_dir), "-p", str(PORT),
              "-c", f"listen_addresses={address}", "-k", str(cluster.socket_dir),
              "-c", "fsync=off"]  # fmt: skip
    process = host.spawn("postgres", ["runuser", "-u", CLUSTER_USER, "--", *server])
    ready = [str(POSTGRES_BIN / "pg_isready"), "-q", "-h", address, "-p", str(PORT)]
    started = wait_until(lambda: host.run(ready, check=False).returncode == 0, 30)
    assert started, process.output()
    psql = [str(POSTGRES_BIN / "psql"), "-h", address, "-p", str(PORT), "-U", CLUSTER_USER]
    host.run([*psql, "-c", "CREATE DATABASE mesh"])
    return f"postgresql://{CLUSTER_USER}@{address}:{PORT}/mesh"
