"""What `meshpeer run` imports: every library it loads stays resident for the agent's life
(bench/footprint.py --imports says how much each holds), so what the agent never uses must
not come in with what it does."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# Everything `meshpeer run` imports before its event loop starts, netlink factories included.
RUN_IMPORTS = """
import json, sys
from meshpeer.peer import cli
from meshpeer.peer.kernel_wg import KernelBackend
cli.build_parser().parse_args(["run"])  # its --version once read the version at every start
KernelBackend()  # pyroute2's IPRoute and WireGuard, as the agent takes them
print(json.dumps(sorted(sys.modules)))
"""
# pyroute2's full package __init__ loads these for any `import pyroute2.x` (3.3 MiB of the
# agent's 66 in a 4-peer mesh); pyroute2-minimal, the same modules with a smaller __init__,
# does not.
UNUSED = ("pyroute2.ndb", "pyroute2.ipdb", "pyroute2.ethtool", "pyroute2.plan9", "sqlite3")
# dnspython (~2.6 MiB resident) only reads DNS-SD, which an agent does only while a path is
# down (Agent._poll_dns_sd); it is loaded then, never at import.
LAZY = ("dns",)
# importlib.metadata (with csv, zipfile and email) reads the version, for --version alone.
ONLY_FOR_VERSION = ("importlib.metadata", "email")
# Never in `meshpeer run` itself (issue 17: 19 MiB of its 62 together): cryptography is the
# join process's (joining.py), and the agent's HTTP is h11's (http.py), not aiohttp's client.
ELSEWHERE = ("cryptography", "aiohttp")


def run_imports(code: str = RUN_IMPORTS) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    modules: list[str] = json.loads(result.stdout)
    return modules


def imported_by(statement: str) -> list[str]:
    return run_imports(f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))")


def test_the_agent_loads_only_the_parts_of_pyroute2_it_uses() -> None:
    modules = run_imports()
    assert "pyroute2.iproute.linux" in modules and "pyroute2.netlink.generic.wireguard" in modules
    loaded = [name for name in modules if name.startswith(UNUSED)]
    assert not loaded, f"pyroute2's full package is installed or imported: {loaded[:5]}"


def within(modules: list[str], packages: tuple[str, ...]) -> list[str]:
    """The modules that are one of `packages` or inside one."""
    return [m for m in modules if any(m == p or m.startswith(f"{p}.") for p in packages)]


@pytest.mark.parametrize("statement", ["import meshpeer.peer.cli", "import meshpeer.peer.agent"])
def test_the_agent_loads_dnspython_only_when_it_reads_dns_sd(statement: str) -> None:
    loaded = within(imported_by(statement), LAZY)
    assert not loaded, f"{statement} imports {loaded[:5]}"


def test_the_agent_reads_its_version_only_for_version() -> None:
    loaded = within(run_imports(), ONLY_FOR_VERSION)
    assert not loaded, f"`meshpeer run` imports {loaded}"


def test_the_agent_holds_neither_cryptography_nor_aiohttp() -> None:
    modules = run_imports()
    assert "h11" in modules
    loaded = within(modules, ELSEWHERE)
    assert not loaded, f"`meshpeer run` imports {loaded[:5]}"
