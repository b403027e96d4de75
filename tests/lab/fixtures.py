"""pytest plugin of the lab: the `lab` fixture, and a clean teardown on SIGTERM too."""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator
from types import FrameType

import pytest

from .topology import Lab

REQUIRED_TOOLS = ("ip", "nft", "conntrack", "wireguard-go", "wg", "ping", "dig")
_FAILED = pytest.StashKey[bool]()  # set per test item by the report hook below


def _terminate(signum: int, frame: FrameType | None) -> None:
    # pytest tears fixtures down on KeyboardInterrupt but dies outright on SIGTERM.
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    signal.signal(signal.SIGTERM, _terminate)


def require_lab_host() -> None:
    """Fail, never skip: a lab test that does not run must not look like one that passed."""
    if os.geteuid() != 0:
        pytest.fail(
            "the lab needs root (network namespaces, nftables); run the test command as root"
        )
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"the lab needs {', '.join(missing)}: run the README's test command to install")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    report = yield
    if call.when == "call":
        item.stash[_FAILED] = call.excinfo is not None
    return report


@pytest.fixture
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    require_lab_host()
    with Lab() as built:
        yield built
        if request.node.stash.get(_FAILED, False):
            _print_process_logs(built)
    # No key, token or credential the lab made may appear in any process's log.
    assert not built.leaked_secrets, f"secrets in logs: {built.leaked_secrets}"


def _print_process_logs(built: Lab) -> None:
    for log in sorted(built.dir.rglob("*.log")):
        print(f"--- {log.relative_to(built.dir)} (last 40 lines)")
        print("\n".join(log.read_text(errors="replace").splitlines()[-40:]))
