"""`rendezvous serve` on a lab host, driven through its real CLI and HTTP API."""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Any

from .process import LabProcess
from .topology import Host
from .wait import wait_until

RENDEZVOUS = str(Path(sys.executable).with_name("rendezvous"))
WG_PORT = 51820
API_PORT = 51821
DNS_PORT = 53
# /metrics holds no secret: the lab reads it without checking the certificate.
_FETCH = (
    "import ssl, sys, urllib.request; "
    "context = ssl._create_unverified_context(); "
    "sys.stdout.write(urllib.request.urlopen(sys.argv[1], context=context).read().decode())"
)


class RendezvousServer:
    """One rendezvous on `host`, its data folder in the host's lab folder."""

    def __init__(self, host: Host, *extra_flags: str, database: str | None = None) -> None:
        """`database`: a postgresql:// URL that serve and every command here use."""
        self.host = host
        self.data_dir = host.dir / "rendezvous-data"
        self.database_flags = ["--database", database] if database else []
        self.extra_flags = [*self.database_flags, *extra_flags]
        self.process: LabProcess | None = None
        self.starts = 0

    @property
    def endpoint(self) -> tuple[str, int]:
        return (str(self.host.address), WG_PORT)

    @property
    def api_url(self) -> str:
        return f"https://{self.host.address}:{API_PORT}"

    def start(self, timeout_s: float = 15.0) -> RendezvousServer:
        address = self.host.address
        command = [
            RENDEZVOUS,
            "serve",
            "--data-dir",
            str(self.data_dir),
            "--wg-listen",
            f"{address}:{WG_PORT}",
            "--api-listen",
            f"{address}:{API_PORT}",
            "--dns-listen",
            f"{address}:{DNS_PORT}",
            "--public-endpoint",
            f"{address}:{WG_PORT}",
            *self.extra_flags,
        ]
        self.starts += 1
        self.process = self.host.spawn(f"rendezvous-{self.starts}", command)
        process = self.process
        ready = wait_until(
            lambda: "serving" in process.output() or not process.running(), timeout_s
        )
        assert ready and process.running(), process.output()
        return self

    def kill(self) -> None:
        """SIGKILL: no flush, no clean close; what was acknowledged must still be on disk."""
        assert self.process is not None
        self.process.popen.send_signal(signal.SIGKILL)
        self.process.popen.wait(5)

    def cli(self, *argv: str) -> str:
        command = [RENDEZVOUS, *argv, "--data-dir", str(self.data_dir), *self.database_flags]
        return self.host.run(command).stdout

    def token(self, uses: int = 1, *flags: str) -> str:
        """A join token from `rendezvous token create`."""
        token = self.cli("token", "create", "--uses", str(uses), *flags).strip()
        self.host.lab.join_tokens.append(token)
        return token

    def impose_routes(self, name: str, routes: list[str]) -> None:
        """What a compromised rendezvous could publish: routes no operator could grant, written
        straight into its database (the serving process follows such writes within 50 ms)."""
        with contextlib.closing(sqlite3.connect(self.data_dir / "rendezvous.sqlite3")) as db, db:
            [(key,)] = db.execute("SELECT public_key FROM peers WHERE name = ?", (name,))
            db.execute("UPDATE peers SET routes = ? WHERE name = ?", (json.dumps(routes), name))
            db.execute("INSERT INTO changes (public_key) VALUES (?)", (key,))

    def public_key(self) -> str:
        info: dict[str, str] = json.loads(self.cli("info", "--json"))
        return info["public_key"]

    def peers(self) -> dict[str, dict[str, Any]]:
        """`rendezvous peers --json`, by name."""
        return {peer["name"]: peer for peer in json.loads(self.cli("peers", "--json"))}

    def metrics(self) -> dict[str, float]:
        text = self.host.run([sys.executable, "-c", _FETCH, f"{self.api_url}/metrics"]).stdout
        values: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values
