"""Every secret a lab made, and whether any process wrote one into its log.

Secrets are found where they live, so nothing has to remember to register them: agents' keys
(base64, and the hex UAPI speaks) and credentials in their state folders; the rendezvous's
WireGuard key (in its database), TLS key and admin token in its data folder; and the join
tokens the lab made (whole, and their secret part).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path

from meshpeer.common import tokens


def leaks(lab_dir: Path, join_tokens: Iterable[str]) -> list[str]:
    """`what (log file)` for every secret found in a log under `lab_dir`."""
    known = dict(_secrets(lab_dir, join_tokens))
    found = []
    for log in sorted(lab_dir.rglob("*.log")):
        text = log.read_text(errors="replace")
        found += [f"{what} ({log.name})" for what, secret in known.items() if secret in text]
    return found


def _secrets(lab_dir: Path, join_tokens: Iterable[str]) -> Iterator[tuple[str, str]]:
    for path in lab_dir.rglob("meshpeer-state/key"):
        yield from _key_forms(f"agent key {path}", path.read_text().strip())
    for path in lab_dir.rglob("meshpeer-state/membership.json"):
        with contextlib.suppress(ValueError, KeyError):
            yield f"credential {path}", str(json.loads(path.read_text())["credential"])
    for path in lab_dir.rglob("admin-token"):
        yield f"admin token {path}", path.read_text().strip()
    for path in lab_dir.rglob("tls.key"):
        body = "".join(line for line in path.read_text().splitlines() if "-----" not in line)
        yield f"TLS key {path}", body[-40:]  # the private scalar's end: unique and long enough
    for path in lab_dir.rglob("rendezvous.sqlite3"):
        yield from _key_forms(f"rendezvous key {path}", _stored_private_key(path))
    for token in join_tokens:
        yield f"join token {token[:12]}", token
        with contextlib.suppress(Exception):
            secret = base64.urlsafe_b64encode(tokens.decode(token).secret).rstrip(b"=").decode()
            yield f"join token secret {token[:12]}", secret


def _key_forms(what: str, text: str) -> Iterator[tuple[str, str]]:
    if not text:
        return
    yield what, text
    with contextlib.suppress(binascii.Error, ValueError):
        yield f"{what} (hex)", base64.b64decode(text).hex()


def _stored_private_key(path: Path) -> str:
    with contextlib.suppress(sqlite3.Error), contextlib.closing(sqlite3.connect(path)) as db:
        rows = db.execute("SELECT value FROM meta WHERE key = 'private_key'").fetchall()
        return str(rows[0][0]) if rows else ""
    return ""
