"""Network namespaces and the commands run in them.

Every namespace the lab makes is named ``mpl-<pid>-<tag>-<role>``: the pid of the Python process
that owns the lab and a random tag make names unique per run, so a killed run's leftovers never
collide with a new one, and the pid lets `sweep_stale` tell which leftovers have no owner any more.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

PREFIX = "mpl"
LAB_ROOT = Path("/tmp/meshpeer-lab")
_OWNED_NAME = re.compile(rf"^{PREFIX}-(\d+)-([0-9a-f]+)-")


class LabError(RuntimeError):
    """A lab command failed; the message carries the command and what it printed."""


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float = 30.0,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion; on failure raise LabError with its output."""
    completed = subprocess.run(
        list(argv), input=stdin, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and completed.returncode != 0:
        raise LabError(
            f"{' '.join(argv)!r} exited {completed.returncode}: "
            f"{completed.stderr.strip() or completed.stdout.strip()}"
        )
    return completed


def namespace_names() -> list[str]:
    listing = run(["ip", "netns", "list"]).stdout
    return [line.split()[0] for line in listing.splitlines() if line.strip()]


def namespace_pids(name: str) -> list[int]:
    listing = run(["ip", "netns", "pids", name], check=False).stdout
    return [int(pid) for pid in listing.split()]


def kill_namespace_processes(name: str) -> None:
    """SIGKILL whatever still runs in a namespace; a process keeps a deleted namespace alive."""
    killed: set[int] = set()
    for _ in range(50):
        pids = namespace_pids(name)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        killed.update(pids)
        time.sleep(0.02)
    else:
        raise LabError(f"processes {namespace_pids(name)} in namespace {name} survived SIGKILL")
    # A dying process leaves the namespace before it has finished exiting: wait for the end.
    deadline = time.monotonic() + 5.0
    while (
        running := [pid for pid in killed if process_running(pid)]
    ) and time.monotonic() < deadline:
        time.sleep(0.01)
    if running:
        raise LabError(f"processes {running} of namespace {name} did not exit after SIGKILL")


def process_running(pid: int) -> bool:
    """True unless the process is gone or a zombie (dead, waiting for its parent to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(") ", 1)[1][:1] not in ("Z", "X")


def delete_namespace(name: str) -> None:
    kill_namespace_processes(name)
    run(["ip", "netns", "delete", name], check=False)


def owner_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale() -> list[str]:
    """Delete namespaces and folders of labs whose owning process is gone; return what went."""
    removed: list[str] = []
    for name in namespace_names():
        match = _OWNED_NAME.match(name)
        if match and not owner_alive(int(match.group(1))):
            delete_namespace(name)
            removed.append(name)
    if LAB_ROOT.is_dir():
        for folder in LAB_ROOT.iterdir():
            pid = folder.name.split("-", 1)[0]
            if pid.isdigit() and not owner_alive(int(pid)):
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(str(folder))
    return removed
