"""`meshpeer run` on lab hosts, driven through its real CLI."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from .process import LabProcess
from .rendezvous import RendezvousServer
from .topology import Host

MESHPEER = str(Path(sys.executable).with_name("meshpeer"))


class MeshAgent:
    def __init__(self, host: Host, name: str) -> None:
        self.host = host
        self.name = name
        self.state_dir = host.dir / "meshpeer-state"
        self.process: LabProcess | None = None

    def start(self, token: str | None, *flags: str) -> MeshAgent:
        command = [MESHPEER, "run", "--state-dir", str(self.state_dir), "--name", self.name]
        command += ["--backend", "userspace", *flags]
        # As README advises: from the environment, not the command line `ps` shows.
        env = {"MESHPEER_TOKEN": token} if token is not None else {}
        self.process = self.host.spawn(f"meshpeer-{self.name}", command, env)
        return self

    def status(self) -> dict[str, Any] | None:
        command = [MESHPEER, "status", "--json", "--state-dir", str(self.state_dir)]
        result = self.host.run(command, check=False)
        if result.returncode != 0:
            return None
        status: dict[str, Any] = json.loads(result.stdout)
        return status

    def paths(self) -> dict[str, str]:
        status = self.status()
        return {peer["name"]: peer["path"] for peer in status["peers"]} if status else {}

    def address(self) -> str:
        status = self.status()
        assert status is not None, self.output()
        return str(status["address"])

    def output(self) -> str:
        return self.process.output() if self.process else ""


def join_with_routes(
    server: RendezvousServer,
    host: Host,
    name: str,
    routes: list[str],
    *flags: str,
    grant: bool = True,
) -> MeshAgent:
    """A peer that joins advertising `routes`, granted by its token (`token create
    --allow-routes`) unless `grant` is False: then they wait for `peer routes approve`."""
    token = server.token(1, "--allow-routes", ",".join(routes)) if grant else server.token()
    return MeshAgent(host, name).start(token, "--advertise-routes", ",".join(routes), *flags)


def all_direct(agents: list[MeshAgent]) -> bool:
    """Every agent lists every other one, each on path `direct`."""
    names = {agent.name for agent in agents}
    for agent in agents:
        paths = agent.paths()
        if set(paths) != names - {agent.name} or set(paths.values()) != {"direct"}:
            return False
    return True
