"""Long-lived processes on lab hosts: started in their own session, always stopped by the lab."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

STOP_GRACE_S = 3.0  # how long SIGTERM gets before SIGKILL


class LabProcess:
    """A process started on a host; its output goes to a log file the lab keeps."""

    def __init__(
        self, name: str, argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.log_path = log_path
        with log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so stop() reaches its children
                env={**os.environ, **(env or {})},
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.popen.poll() is not None:
            return
        _signal_group(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            _signal_group(self.popen.pid, signal.SIGKILL)
            self.popen.wait(STOP_GRACE_S)


class LineAgent:
    """A helper process spoken to in JSON lines on stdin and stdout (see udp_agent.py)."""

    def __init__(self, name: str, argv: Sequence[str]) -> None:
        self.name = name
        self.popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            text=True,
            bufsize=1,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def read(self, timeout: float) -> dict[str, Any]:
        stdout = self.popen.stdout
        assert stdout is not None
        deadline = time.monotonic() + timeout
        while not select.select([stdout], [], [], max(0.0, deadline - time.monotonic()))[0]:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{self.name}: no answer within {timeout} s")
        line = stdout.readline()
        if not line:
            stderr = self.popen.stderr.read() if self.popen.stderr else ""
            raise RuntimeError(f"{self.name} exited: {stderr.strip()}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def request(self, timeout: float = 10.0, **command: Any) -> dict[str, Any]:
        stdin = self.popen.stdin
        assert stdin is not None
        stdin.write(json.dumps(command) + "\n")
        stdin.flush()
        return self.read(timeout)

    def stop(self) -> None:
        if self.popen.poll() is None:
            _signal_group(self.popen.pid, signal.SIGKILL)
            self.popen.wait(STOP_GRACE_S)
        for stream in (self.popen.stdin, self.popen.stdout, self.popen.stderr):
            if stream is not None:
                stream.close()


def _signal_group(pid: int, signum: signal.Signals) -> None:
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        pass
