"""The lab's check that no log holds a secret: it finds each kind it claims to."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from meshpeer.common.tokens import JoinToken
from tests.lab.leaks import leaks


def test_each_kind_of_secret_is_found_in_a_log(tmp_path: Path) -> None:
    state = tmp_path / "p1" / "meshpeer-state"
    state.mkdir(parents=True)
    raw = X25519PrivateKey.generate().private_bytes_raw()
    (state / "key").write_text(base64.b64encode(raw).decode() + "\n")
    (state / "membership.json").write_text(json.dumps({"credential": "c" * 43}))
    token = JoinToken("https://192.0.2.1:51821", bytes(range(32)), bytes(32), None).encode()
    log = tmp_path / "p1" / "meshpeer-p1.log"

    log.write_text("all quiet\n")
    assert leaks(tmp_path, [token]) == []
    for secret, what in [
        (base64.b64encode(raw).decode(), "agent key"),
        (raw.hex(), "(hex)"),
        ("c" * 43, "credential"),
        (token, "join token"),
        (base64.urlsafe_b64encode(bytes(range(32))).rstrip(b"=").decode(), "token secret"),
    ]:
        log.write_text(f"debug: {secret}\n")
        found = leaks(tmp_path, [token])
        assert any(what in item for item in found), (what, found)
