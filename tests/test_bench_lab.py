"""The benchmarks still run (tiny sizes, --smoke): figures come from bench/, never from tests."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.lab.fixtures import require_lab_host

BENCH = Path(__file__).resolve().parent.parent / "bench"

pytestmark = pytest.mark.lab


def smoke(script: str, *flags: str, timeout: float = 240) -> str:
    require_lab_host()
    result = subprocess.run(
        [sys.executable, str(BENCH / script), "--smoke", *flags],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("machine: "), result.stdout
    return result.stdout


def test_handshake_benchmark_runs() -> None:
    output = smoke("handshakes.py")
    assert "X25519 floor" in output and "keepalives/s median" in output
    assert "ratio rendezvous / wireguard-go" in output


def test_dns_benchmark_runs() -> None:
    output = smoke("dns_answers.py")
    assert output.count("q/s by dnsperf") == 5 and "ratio meshpeer / NSD" in output
    assert "core, uncached, fast path" in output and "under churn" in output


def test_convergence_benchmark_runs() -> None:
    output = smoke("convergence.py")
    figures = ("all pairs, 2 peers", "new pair", "join a mesh of 2", "heal after a NAT", "upgrade")
    for figure in figures:
        assert figure in output, output


def test_scale_benchmark_runs() -> None:
    output = smoke("scale.py", "--pg-top", "3")
    for engine in ("sqlite", "postgresql"):
        figures = output.split(f"== {engine}\n", 1)[1].split("== ", 1)[0]
        assert "CPU share" in figures and "resident memory" in figures, output
        assert "during the load" in figures and "warnings or errors" not in figures, output
        assert "every endpoint stored after 0." in figures and "never" not in figures, output
    assert "PostgreSQL, its " in output and "memory (PSS)" in output, output
    assert output.count(" us each), ") == 3, output  # the statements, PostgreSQL's only
    assert "== PostgreSQL / SQLite" in output and "rendezvous and its database" in output, output


def test_footprint_benchmark_runs() -> None:
    output = smoke("footprint.py")
    assert "median: meshpeer run" in output and "anonymous" in output, output
    assert "largest mappings of the median agent" in output, output


def test_footprint_import_costs_run() -> None:
    result = subprocess.run(
        [sys.executable, str(BENCH / "footprint.py"), "--imports"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    for library in ("h11", "pyroute2", "zeroconf"):
        assert f"MiB  {library} (" in result.stdout, result.stdout
    assert "MiB  on use: dnspython" in result.stdout, result.stdout
    assert "MiB  the join process" in result.stdout, result.stdout


def test_abuse_benchmark_runs() -> None:
    output = smoke("abuse.py")
    assert output.count("healthz p50") == 11 and "failed 0" in output, output


def test_relay_benchmark_runs() -> None:
    output = smoke("relay.py")
    assert "core datagrams/s" in output and "relayed Mbit/s" in output
    assert "ratio relayed / direct throughput" in output


def test_instances_benchmark_runs() -> None:
    output = smoke("instances.py")
    for engine in ("postgresql", "sqlite"):
        assert re.search(rf"^{engine} .* \(10 of 10 arrived\)$", output, re.MULTILINE), output
