"""README's run command (`bash tests/demo`): the mesh forms, the output shows it, no lab is left."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.lab.fixtures import require_lab_host
from tests.lab.netns import PREFIX

pytestmark = pytest.mark.lab


def lab_namespaces() -> list[str]:
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return [line.split()[0] for line in listing.stdout.splitlines() if line.startswith(PREFIX)]


def test_the_demo_shows_three_direct_peers_and_a_full_ping_matrix() -> None:
    require_lab_host()
    before = set(lab_namespaces())
    demo = subprocess.run(
        [sys.executable, "-m", "tests.lab.demo"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert demo.returncode == 0, demo.stdout + demo.stderr
    output = demo.stdout
    assert "all three pairs direct" in output
    status_rows = [line.split() for line in output.splitlines() if " 10.77." in line]
    paths = [row[3] for row in status_rows if len(row) > 3 and row[3] in {"direct", "none", "lan"}]
    assert [row[2] for row in status_rows if len(row) > 3 and row[3] == "direct"] == ["online"] * 6
    assert paths == ["direct"] * 6, output
    matrix = output.split("== Ping matrix")[1].split("==")[0]
    assert matrix.count(" ms") == 6 and "FAILED" not in matrix, matrix
    assert output.count("._wireguard._udp.mesh.internal.\n") >= 3  # dig's PTR answer
    assert set(lab_namespaces()) <= before  # cleaned up
