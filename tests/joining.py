"""A joining peer for tests: its own key, signed join bodies, and the credential unsealed."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from meshpeer.common import proof
from meshpeer.common.keys import encode_key


@dataclass
class Joiner:
    name: str
    private_key: X25519PrivateKey = field(default_factory=X25519PrivateKey.generate)
    # Every join of one key must carry a later time than the one before (replay defence).
    _clock: itertools.count[int] = field(
        default_factory=lambda: itertools.count(int(time.time() * 1000))
    )

    @property
    def public_key(self) -> bytes:
        return self.private_key.public_key().public_bytes_raw()

    @property
    def public_key_b64(self) -> str:
        return encode_key(self.public_key)

    def request(
        self, token: str, rendezvous_key: bytes, routes: tuple[str, ...] = ()
    ) -> proof.JoinRequest:
        time_ms = next(self._clock)
        return proof.sign_join(token, self.private_key, rendezvous_key, self.name, routes, time_ms)

    def body(
        self, token: str, rendezvous_key: bytes, routes: tuple[str, ...] = ()
    ) -> dict[str, object]:
        return self.request(token, rendezvous_key, routes).to_json()

    def credential(self, answer: dict[str, Any], rendezvous_key: bytes) -> str:
        keys = proof.peer_keys(self.private_key, rendezvous_key)
        return proof.unseal(keys, self.public_key, answer["sealed_credential"])
