"""The agent's state folder: its key (made once, mode 0600), its membership, and its status.

key            the X25519 private key, base64 (as `wg genkey` writes it)
key.pub        its public key, as joining.py derived it, and which key it was derived from
tls-certificates.json  SHA-256 of the API certificates seen to hold the pinned key
membership.json what joining gave us: API URL, credential, mesh address, the rendezvous
status.json    written by `meshpeer run` for `meshpeer status` and `meshpeer down`
"""

from __future__ import annotations

import binascii
import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from meshpeer.common.errors import InvalidInput, UsageError
from meshpeer.common.files import write_atomically
from meshpeer.common.keys import encode_key, parse_key
from meshpeer.common.pinning import MAX_REMEMBERED
from meshpeer.common.tokens import JoinToken

from .instances import Instance, api_url, parse_instances

DEFAULT_STATE_DIR = Path("/var/lib/meshpeer")


class StateError(UsageError):
    """The state folder is unusable; the message says what to fix."""


@dataclass(frozen=True, slots=True)
class Membership:
    api_url: str
    credential: str
    name: str
    address: str  # our mesh address
    network: str  # the mesh CIDR
    zone: str
    dns: str  # HOST:PORT of the rendezvous's DNS
    rendezvous_key: str  # base64
    rendezvous_endpoint: str  # HOST:PORT
    rendezvous_address: str  # its mesh address
    routes: tuple[str, ...] = ()
    tls_pin: str | None = None  # the API's key, from the token; None: CA-checked (a TLS proxy)
    # Every rendezvous instance serving the mesh, as last listed (instances.py): where to go
    # when the one above stops answering, after a restart too.
    instances: tuple[Instance, ...] = ()

    @classmethod
    def from_join(cls, answer: dict[str, Any], token: JoinToken, credential: str) -> Membership:
        peer, rendezvous = answer["peer"], answer["rendezvous"]
        return cls(
            api_url=token.api_url,
            tls_pin=token.tls_pin,
            credential=credential,
            name=str(peer["name"]),
            address=str(peer["address"]),
            network=str(answer["network"]),
            zone=str(answer["zone"]),
            dns=str(answer["dns"]),
            rendezvous_key=str(rendezvous["public_key"]),
            rendezvous_endpoint=str(rendezvous["endpoint"]),
            rendezvous_address=str(rendezvous["address"]),
            routes=tuple(str(route) for route in peer.get("routes", [])),
            instances=parse_instances(answer.get("instances")),
        )

    def instance(self) -> Instance:
        """The instance this membership talks to, as the list would name it."""
        return Instance(self.api_url, self.rendezvous_endpoint, self.dns)

    def moved_to(self, instance: Instance) -> Membership:
        return replace(
            self, api_url=instance.api_url, rendezvous_endpoint=instance.endpoint, dns=instance.dns
        )


class StateDir:
    def __init__(self, path: Path) -> None:
        self.path = path

    def prepare(self) -> None:
        try:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.path.chmod(0o700)  # it holds the key: tightened even if made looser before
        except OSError as error:
            raise StateError(
                f"cannot use state folder {self.path}: {error.strerror}; pass --state-dir"
            ) from None

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Held for as long as `run` runs: a second `run` on the same folder stops at once."""
        path = self.path / "lock"
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(descriptor, 32, 0).decode(errors="replace").strip() or "?"
                raise StateError(
                    f"another `meshpeer run` (pid {holder}) uses {self.path}: stop it first "
                    "(`meshpeer down`), or give this one its own --state-dir"
                ) from None
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
            yield
        finally:
            os.close(descriptor)  # and with it the lock

    def private_key(self) -> bytes | None:
        """Ours (32 bytes), or None until the first start makes it (joining.py). The same key
        is the same peer across restarts."""
        path = self.path / "key"
        if not path.exists():
            return None
        try:
            return parse_key(path.read_text().strip(), "private key")
        except (ValueError, UnicodeDecodeError, binascii.Error):
            raise StateError(f"{path} is not a WireGuard private key; remove it") from None

    def save_private_key(self, private_key: bytes) -> None:
        _write_private(self.path / "key", encode_key(private_key) + "\n")

    def public_key(self) -> bytes | None:
        """Ours, as joining.py derived it; None until it has, or once the key file changed
        (a key put in by hand). Deriving takes X25519, which the agent itself never loads."""
        private_key = self.private_key()
        try:
            stored = json.loads((self.path / "key.pub").read_text())
            if private_key is not None and stored["of"] == _key_digest(private_key):
                return parse_key(stored["public_key"])
        # InvalidInput is a ValueError; RecursionError: a file of "[" nested past the limit
        except (OSError, ValueError, TypeError, KeyError, RecursionError):
            pass
        return None

    def save_public_key(self, private_key: bytes, public_key: bytes) -> None:
        text = json.dumps({"public_key": encode_key(public_key), "of": _key_digest(private_key)})
        _write_private(self.path / "key.pub", text)

    def certificates(self) -> tuple[str, ...]:
        """Digests of the API certificates seen to hold the pinned key (pinning.py), so an
        agent started again need not parse them again."""
        try:
            stored = json.loads((self.path / "tls-certificates.json").read_text())
        except (OSError, ValueError, RecursionError):
            return ()
        if not isinstance(stored, list):
            return ()
        digests = [item for item in stored[-MAX_REMEMBERED:] if _is_digest(item)]
        return tuple(digests)

    def save_certificates(self, digests: tuple[str, ...]) -> None:
        text = json.dumps(list(digests[-MAX_REMEMBERED:]))
        _write_private(self.path / "tls-certificates.json", text)

    def membership(self) -> Membership | None:
        path = self.path / "membership.json"
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text())
            data["routes"] = tuple(data.get("routes", ()))
            data["instances"] = parse_instances(data.get("instances", []))
            membership = Membership(**data)
            if not isinstance(membership.api_url, str) or not isinstance(membership.dns, str):
                raise TypeError("the API URL and the DNS address must be text")
        except (ValueError, TypeError) as error:
            raise StateError(f"{path} is damaged ({error}); remove it and join again") from None
        if not membership.api_url.startswith("https://"):
            raise StateError(
                f"{path} is from before the API used TLS: join again with a new token "
                "(`rendezvous token create`)"
            )
        try:  # a URL moved to from a list (instances.py) is checked as when it was listed
            api_url(membership.api_url)
        except InvalidInput:
            raise StateError(f"{path} holds an unusable API URL; remove it, join again") from None
        return membership

    def save_membership(self, membership: Membership) -> None:
        _write_private(self.path / "membership.json", json.dumps(asdict(membership), indent=2))

    def forget_status(self) -> None:
        (self.path / "status.json").unlink(missing_ok=True)

    def forget_membership(self) -> None:
        (self.path / "membership.json").unlink(missing_ok=True)

    def write_status(self, status: dict[str, Any]) -> None:
        # Rebuilt from the live device whenever it changes: no fsync, only an atomic replace.
        _write_private(self.path / "status.json", json.dumps(status, indent=2), durable=False)

    def read_status(self) -> dict[str, Any] | None:
        path = self.path / "status.json"
        if not path.exists():
            return None
        try:
            status: dict[str, Any] = json.loads(path.read_text())
        except ValueError:
            return None
        return status


def _write_private(path: Path, text: str, *, durable: bool = True) -> None:
    """Whole or not at all, readable by root only, never through a planted link."""
    write_atomically(path, text.encode(), 0o600, durable=durable)


def _key_digest(private_key: bytes) -> str:
    """Names which private key a stored public key belongs to, without holding it."""
    return hashlib.sha256(b"meshpeer key.pub " + private_key).hexdigest()


def _is_digest(item: object) -> bool:
    return isinstance(item, str) and len(item) == 64 and all(c in "0123456789abcdef" for c in item)


def process_start(pid: int) -> int | None:
    """When a process started (clock ticks since boot, /proc/PID/stat field 22): with its pid,
    what tells our agent from whatever process got its pid after it died."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()  # the command name may hold spaces
    if not fields or fields[0] in ("Z", "X"):  # it has exited, only not yet been reaped
        return None
    return int(fields[19]) if len(fields) > 19 and fields[19].isdigit() else None


def is_running_agent(status: dict[str, Any]) -> bool:
    """The status file's agent is alive: its pid exists and started when the agent did."""
    pid, started = status.get("pid"), status.get("pid_start")
    return isinstance(pid, int) and started is not None and process_start(pid) == started
