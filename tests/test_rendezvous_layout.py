"""Where things live in rendezvous/ and dns/: small modules, SQL only in the store's engine, and
every rendezvous time in timers.py."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MAX_MODULE_LINES = 400
SQL_ENGINE = {"sqlitestore.py", "sqlschema.py", "pgstore.py", "pgschema.py"}
SQL = re.compile(r"\b(SELECT|INSERT INTO|UPDATE \w+ SET|DELETE FROM|BEGIN IMMEDIATE|PRAGMA)\b")
TIME_CONSTANT = re.compile(r"^[A-Z][A-Z0-9_]*_(S|MS)\s*[:=]", re.MULTILINE)


def modules(folder: str) -> list[Path]:
    return sorted((REPO / folder).glob("*.py"))


def test_every_module_is_small() -> None:
    long = [
        f"{path.relative_to(REPO)}: {lines} lines"
        for path in modules("rendezvous") + modules("dns")
        if (lines := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    ]
    assert not long, long


def test_only_the_store_engine_speaks_sql() -> None:
    """The registry logic asks the store (storage.py), so another engine can slot in."""
    speaking = [
        f"{path.name}: {match.group(0)}"
        for path in modules("rendezvous")
        if path.name not in SQL_ENGINE
        for match in SQL.finditer(path.read_text())
    ]
    assert not speaking, speaking


def test_every_rendezvous_time_is_in_timers() -> None:
    stray = [
        f"{path.name}: {match.group(0)}"
        for path in modules("rendezvous")
        if path.name != "timers.py"
        for match in TIME_CONSTANT.finditer(path.read_text())
    ]
    assert not stray, stray
