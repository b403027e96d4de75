"""deploy/meshpeer.service: systemd accepts it, and its command line, run the way systemd runs
it (Environment=, EnvironmentFile=, $MESHPEER_FLAGS), joins once and resumes after restarts,
also once the token in the environment file is no longer valid."""

from __future__ import annotations

import configparser
import json
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.lab import Lab, NatType
from tests.lab.agents import MESHPEER, MeshAgent
from tests.lab.rendezvous import RendezvousServer
from tests.lab.wait import wait_until

UNIT = Path(__file__).resolve().parent.parent / "deploy" / "meshpeer.service"
INSTALLED_MESHPEER = "/usr/local/bin/meshpeer"


def service_section() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string(UNIT.read_text())
    return parser["Service"]


def test_systemd_verifies_the_unit_without_a_warning(tmp_path: Path) -> None:
    systemd_analyze = shutil.which("systemd-analyze")
    assert systemd_analyze, "systemd-analyze is missing (Debian package systemd)"
    unit = tmp_path / "meshpeer.service"
    unit.write_text(UNIT.read_text().replace(INSTALLED_MESHPEER, MESHPEER))
    result = subprocess.run(
        [systemd_analyze, "verify", str(unit)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_the_unit_restarts_on_failure_but_not_on_a_usage_error() -> None:
    service = service_section()
    assert service["Restart"] == "on-failure"
    assert service["RestartPreventExitStatus"] == "2"
    assert service["ExecStart"].startswith(f"{INSTALLED_MESHPEER} run ")


def unit_command(state_dir: Path, env_file: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """ExecStart= and the environment as systemd would give them (Environment=, then the file)."""
    service = service_section()
    env = dict(item.split("=", 1) for item in shlex.split(service["Environment"]))
    env["MESHPEER_STATE_DIR"] = str(state_dir)  # the lab host's folder instead of /var/lib
    env.update(env_file)
    words = shlex.split(service["ExecStart"].replace(INSTALLED_MESHPEER, MESHPEER))
    argv: list[str] = []
    for word in words:  # systemd splits an unquoted $VAR into words
        argv += shlex.split(env.get(word[1:], "")) if word.startswith("$") else [word]
    return argv, env


@pytest.mark.lab
def test_the_units_command_joins_then_resumes_after_its_token_is_revoked(lab: Lab) -> None:
    server = RendezvousServer(lab.add_public_host("rendezvous")).start()
    token = server.token(1)
    agent = MeshAgent(lab.add_nat("home", NatType.PORT_RESTRICTED).add_host("box"), "box")
    env_file = {"MESHPEER_TOKEN": token, "MESHPEER_FLAGS": "--backend userspace --name box"}
    argv, env = unit_command(agent.state_dir, env_file)

    agent.process = agent.host.spawn("unit-1", argv, env)
    assert wait_until(lambda: agent.status() is not None, 15), agent.output()
    address = agent.address()
    agent.process.stop()  # systemctl stop: SIGTERM

    token_id = json.loads(server.cli("token", "list", "--json"))[0]["id"]
    server.cli("token", "revoke", token_id)
    agent.process = agent.host.spawn("unit-2", argv, env)
    assert wait_until(lambda: "resuming the stored membership" in agent.output(), 15)
    assert wait_until(lambda: server.peers()["box"]["endpoint"] is not None, 15)
    assert wait_until(lambda: agent.status() is not None, 15), agent.output()
    assert agent.address() == address and agent.process.running()


@pytest.mark.parametrize("unit", ["meshpeer.service", "rendezvous.service"])
def test_each_unit_is_hardened_below_an_exposure_of_5(unit: str) -> None:
    path = UNIT.with_name(unit)
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--threshold=49", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    [overall] = [line for line in result.stdout.splitlines() if "Overall exposure level" in line]
    exposure = float(overall.split(":")[1].split()[0])
    assert exposure < 5.0, result.stdout


def test_the_rendezvous_unit_verifies_without_a_warning(tmp_path: Path) -> None:
    unit = tmp_path / "meshpeer-rendezvous.service"
    rendezvous = str(Path(MESHPEER).with_name("rendezvous"))
    unit.write_text(
        UNIT.with_name("rendezvous.service")
        .read_text()
        .replace("/opt/meshpeer/bin/rendezvous", rendezvous)
    )
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr
