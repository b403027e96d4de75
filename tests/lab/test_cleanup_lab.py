"""Nothing a lab made survives it: not after success, failure, interruption or SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from tests.lab import Lab, NatType
from tests.lab.fixtures import require_lab_host
from tests.lab.netns import namespace_names, process_running, run
from tests.lab.wireguard import WireGuardGo

pytestmark = pytest.mark.lab
REPO = Path(__file__).resolve().parent.parent.parent

# A lab scenario with a wireguard-go and a sleeper on a NATed host; it records what it made,
# then fails, or waits to be interrupted, as LAB_ENDING says.
SCENARIO = textwrap.dedent(
    """
    import json, os, time
    from tests.lab import NatType
    from tests.lab.wireguard import WireGuardGo

    def build(lab):
        host = lab.add_nat("nat", NatType.PORT_RESTRICTED).add_host("a")
        wg = WireGuardGo(host, "10.77.0.1/24").start()
        sleeper = host.spawn("sleeper", ["sleep", "600"])
        record = {"run_id": lab.run_id, "namespaces": list(lab.namespaces),
                  "pids": [wg.process.pid, sleeper.pid], "dir": str(lab.dir)}
        with open(os.environ["LAB_RECORD"] + ".tmp", "w") as out:
            json.dump(record, out)
        os.rename(os.environ["LAB_RECORD"] + ".tmp", os.environ["LAB_RECORD"])

    def test_scenario(lab):
        build(lab)
        if os.environ["LAB_ENDING"] == "fail":
            assert False, "failing on purpose inside a lab scenario"
        time.sleep(600)

    if __name__ == "__main__":  # a run that is killed: no pytest, no teardown
        from tests.lab import Lab
        build(Lab())
        time.sleep(600)
    """
)


def leftovers(record: dict[str, Any]) -> list[str]:
    found = [name for name in namespace_names() if record["run_id"] in name]
    found += [f"pid {pid}" for pid in record["pids"] if process_running(pid)]
    found += [
        line for line in run(["ip", "-o", "link"]).stdout.splitlines() if record["run_id"] in line
    ]
    if Path(record["dir"]).exists():
        found.append(record["dir"])
    return found


def start_scenario(
    tmp_path: Path, ending: str, *, under_pytest: bool = True
) -> subprocess.Popen[bytes]:
    script = tmp_path / "scenario_test.py"
    script.write_text(SCENARIO)
    env = {
        **os.environ,
        "LAB_RECORD": str(tmp_path / "record.json"),
        "LAB_ENDING": ending,
        "PYTHONPATH": str(REPO),
    }
    pytest_argv = [
        "-m",
        "pytest",
        "-q",
        "-p",
        "tests.lab.fixtures",
        "-p",
        "no:cacheprovider",
        "-o",
        "addopts=",
        str(script),
    ]
    argv = [sys.executable, *(pytest_argv if under_pytest else [str(script)])]
    return subprocess.Popen(
        argv,
        cwd=tmp_path,
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def wait_for_record(tmp_path: Path, scenario: subprocess.Popen[bytes]) -> dict[str, Any]:
    record_path = tmp_path / "record.json"
    deadline = time.monotonic() + 60
    while not record_path.exists():
        if scenario.poll() is not None or time.monotonic() > deadline:
            output = scenario.stdout.read().decode() if scenario.stdout else ""
            pytest.fail(f"the scenario never built its lab:\n{output}")
        time.sleep(0.1)
    record: dict[str, Any] = json.loads(record_path.read_text())
    assert leftovers(record), "the scenario made nothing to clean up"
    return record


def test_a_closed_lab_leaves_nothing() -> None:
    require_lab_host()
    with Lab() as lab:
        host = lab.add_nat("nat", NatType.PORT_RESTRICTED).add_host("a")
        wg = WireGuardGo(host, "10.77.0.1/24").start()
        assert wg.process is not None
        record = {
            "run_id": lab.run_id,
            "pids": [wg.process.pid, host.spawn("s", ["sleep", "600"]).pid],
            "dir": str(lab.dir),
        }
        assert leftovers(record)
    assert leftovers(record) == []


def test_a_scenario_that_fails_on_purpose_leaves_nothing(tmp_path: Path) -> None:
    require_lab_host()
    scenario = start_scenario(tmp_path, "fail")
    output = scenario.communicate(timeout=120)[0].decode()
    record = json.loads((tmp_path / "record.json").read_text())

    assert scenario.returncode == 1 and "failing on purpose" in output, output
    assert leftovers(record) == []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_scenario_leaves_nothing(tmp_path: Path, signum: signal.Signals) -> None:
    require_lab_host()
    scenario = start_scenario(tmp_path, "wait")
    record = wait_for_record(tmp_path, scenario)

    scenario.send_signal(signum)
    scenario.communicate(timeout=60)

    assert leftovers(record) == []


def test_the_leftovers_of_a_killed_run_are_swept_by_the_next_lab(tmp_path: Path) -> None:
    require_lab_host()
    scenario = start_scenario(tmp_path, "wait", under_pytest=False)
    record = wait_for_record(tmp_path, scenario)

    scenario.kill()  # SIGKILL: no teardown runs
    scenario.communicate(timeout=30)
    assert any(record["run_id"] in name for name in namespace_names())

    with Lab():
        pass
    assert leftovers(record) == []
