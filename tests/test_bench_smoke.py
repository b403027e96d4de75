"""The benchmarks still run (tiny sizes): figures come from bench/, never from tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"


def test_handshake_benchmark_runs() -> None:
    result = subprocess.run(
        [sys.executable, str(BENCH / "handshakes.py"), "--peers", "20", "--rounds", "1"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "handshakes/s: median" in result.stdout and "ratio" in result.stdout


def test_dns_benchmark_runs() -> None:
    result = subprocess.run(
        [sys.executable, str(BENCH / "dns_answers.py"), "--smoke"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "q/s by dnsperf" in result.stdout and "p99" in result.stdout
