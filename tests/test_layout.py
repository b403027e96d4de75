"""The package layout: code folders install under meshpeer.*; dns/ never shadows dnspython."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import dns.message

import meshpeer.dns.naming

REPO = Path(__file__).resolve().parent.parent
SITE_DNS = "site-packages/dns/message.py"
COMPOSE_FILE = REPO / "docker" / "compose.yaml"


def test_dnspython_wins_under_pytest() -> None:
    assert dns.message.__file__ is not None and dns.message.__file__.endswith(SITE_DNS)
    assert dns.message.Message.__module__ == "dns.message"


def test_dnspython_wins_for_python_started_in_the_repository_root() -> None:
    probe = (
        "import dns.message, meshpeer.dns.naming as naming;"
        "print(dns.message.__file__); print(naming.__file__)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True
    )
    dnspython_file, naming_file = result.stdout.split()
    assert dnspython_file.endswith(SITE_DNS)
    assert Path(naming_file) == REPO / "dns" / "naming.py"


def test_the_dns_folder_is_meshpeer_dns() -> None:
    assert meshpeer.dns.naming.__file__ is not None
    assert Path(meshpeer.dns.naming.__file__) == REPO / "dns" / "naming.py"
    assert not (REPO / "dns" / "__init__.py").exists(), "a dns/__init__.py would shadow dnspython"


def test_console_scripts_print_their_help() -> None:
    for script in ("rendezvous", "meshpeer"):
        path = shutil.which(script, path=str(Path(sys.executable).parent))
        assert path is not None, f"{script} is not installed next to {sys.executable}"
        result = subprocess.run([path], capture_output=True, text=True, check=False)
        assert result.returncode == 0 and result.stdout.startswith(f"usage: {script}")


def test_a_bad_flag_is_one_line_and_exit_2() -> None:
    bin_dir = Path(sys.executable).parent
    result = subprocess.run(
        [bin_dir / "meshpeer", "--no-such-flag"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "meshpeer: error: unrecognized arguments: --no-such-flag (see `meshpeer --help`)"
    ]


def test_setup_waits_for_another_apt_instead_of_failing() -> None:
    """A fresh cloud VM runs apt at boot; every apt-get of the set-up waits for its lock."""
    setup = (Path(__file__).parent / "setup").read_text()
    calls = [line for line in setup.splitlines() if line.strip().startswith("apt-get")]
    assert calls and all('"${wait_for_lock[@]}"' in line for line in calls), calls
    assert "DPkg::Lock::Timeout=" in setup


def test_compose_passes_every_setting_serve_knows() -> None:
    """README tells users to set RENDEZVOUS_* variables when they run compose: each must reach
    the container (three of eight once did not, so a TLS proxy's URL had no effect)."""

    from meshpeer.rendezvous import engines, settings

    compose = COMPOSE_FILE.read_text()
    passed = set(re.findall(r"^\s+(RENDEZVOUS_[A-Z_]+):", compose, re.MULTILINE))
    known = {"RENDEZVOUS_" + name.upper() for name in settings.Overrides.__dataclass_fields__}
    known.add(engines.DATABASE_VARIABLE)  # where a second host finds the shared database
    assert known <= passed, known - passed
    assert "stop_grace_period:" in compose


def test_compose_without_a_profile_is_the_rendezvous_alone() -> None:
    """`docker compose up` stays one rendezvous on SQLite: every other service (PostgreSQL for
    several instances) waits for its profile."""
    services = compose_services(COMPOSE_FILE.read_text())
    assert "rendezvous" in services and "postgres" in services
    default = [name for name, block in services.items() if "    profiles:" not in block]
    assert default == ["rendezvous"]
    assert "profiles: [postgres]" in services["postgres"]


def compose_services(compose: str) -> dict[str, str]:
    """Each service's block of lines, by name (two-space keys under `services:`)."""
    found = re.search(r"^services:\n(.*?)(?=^\S)", compose, re.MULTILINE | re.DOTALL)
    assert found, "compose.yaml has no services: section"
    section = found.group(1)
    parts = re.split(r"^  ([a-z][a-z0-9-]*):\n", section, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


# Who may import whom: common/ is the shared vocabulary and imports none of the others; dns/ is
# the pure record model and answer core; the agent never imports the rendezvous, nor the other
# way round, so neither side can grow a dependency on the other's internals.
ALLOWED_IMPORTS = {
    "common": set(),
    "dns": {"common"},
    "peer": {"common", "dns"},
    "rendezvous": {"common", "dns"},
}


def _meshpeer_imports(path: Path) -> set[str]:
    import ast

    folders: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "meshpeer" and len(parts) > 1:
                folders.add(parts[1])
    return folders


def test_imports_go_one_way() -> None:
    wrong = []
    for folder, allowed in ALLOWED_IMPORTS.items():
        for path in sorted((REPO / folder).glob("*.py")):
            for imported in _meshpeer_imports(path) - allowed - {folder}:
                wrong.append(f"{path.relative_to(REPO)} imports meshpeer.{imported}")
    assert not wrong, wrong


def _is_lab_file(path: Path) -> bool:
    marked = re.compile(r"^(@pytest\.mark\.lab|pytestmark = pytest\.mark\.lab)", re.MULTILINE)
    return bool(marked.search(path.read_text()))


def test_lab_tests_live_in_files_named_for_it() -> None:
    """`*_lab.py` holds the tests that build namespaces (root); no other file has one, so a
    newcomer can run every test that needs no root with `-m 'not lab'` or by name alike."""
    files = sorted((REPO / "tests").rglob("test_*.py"))
    assert files
    misnamed = [
        str(path.relative_to(REPO))
        for path in files
        if _is_lab_file(path) != path.stem.endswith("_lab")
    ]
    assert not misnamed, misnamed
