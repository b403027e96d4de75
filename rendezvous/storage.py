"""What the registry asks of its database, engine-neutral: SQLite today (sqlitestore.py), a
server database such as PostgreSQL later, behind the same two interfaces.

A `Store` is the open database of one data folder, scoped to its network once `network_id` is
set. Every write goes through one `Transaction`, which the engine commits durably before the
`async with` ends (a join is acknowledged only after that) and orders against the writers of
other processes, so reading a token and spending its last use has exactly one winner. Each
write that changes a peer also records the change, so other processes' `changes_since` sees it.
No SQL leaves the engine: the registry speaks only in the methods below.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

from meshpeer.common.endpoints import Endpoint, IPAddress, IPNetwork
from meshpeer.common.errors import Failure

from .model import Peer, Token


class StoreFailure(Failure):
    """The database itself failed (locked too long, disk full, corrupt): not the caller's fault."""


@dataclass(frozen=True, slots=True)
class StoredPeer:
    peer: Peer
    credential_hash: bytes | None  # only the hash of a peer's credential is ever stored


@dataclass(frozen=True, slots=True)
class StoredToken:
    token_id: str
    uses_left: int
    expires_at: float
    revoked: bool
    allowed_routes: tuple[IPNetwork, ...]


@dataclass(frozen=True, slots=True)
class JoinRecord:
    token_id: str  # the token the key first joined with ('' when added by hand)
    last_join_ms: int  # the newest signed join time accepted: older ones are replays


@dataclass(frozen=True, slots=True)
class ServingInstance:
    """One rendezvous serving this database, as members reach it."""

    instance_id: str  # the data folder's (instancefile.py), never shown to members
    api_url: str
    endpoint: str  # its public WireGuard endpoint, HOST:PORT
    dns: str  # where it answers DNS, HOST:PORT

    def to_json(self) -> dict[str, str]:
        return {"api_url": self.api_url, "endpoint": self.endpoint, "dns": self.dns}


class Reader(Protocol):
    """Reads that are consistent inside a transaction, or under `Store.exclusive()`."""

    async def read_meta(self) -> dict[str, str]: ...

    async def changes_since(self, seq: int) -> list[tuple[int, bytes]]:
        """(sequence, public key) of every peer change committed after `seq`, oldest first."""
        ...

    async def stored_peer(self, public_key: bytes) -> StoredPeer | None: ...


class Transaction(Reader, Protocol):
    async def set_meta(self, key: str, value: str) -> None: ...

    async def upgrade_schema(self, meta: dict[str, str]) -> None:
        """Bring an older data folder's tables forward; InvalidInput if a newer one wrote it."""
        ...

    async def default_network(self) -> tuple[int, str] | None:
        """(id, CIDR) of the network this folder serves, if it has one yet."""
        ...

    async def add_network(self, cidr: str, zone: str) -> int: ...

    async def update_network(self, network_id: int, cidr: str, zone: str) -> None: ...

    async def peer_count(self, network_id: int) -> int: ...

    async def other_live_instances(self, own_id: str, live_s: float) -> int:
        """How many instances besides `own_id` stamped their heartbeat within `live_s`."""
        ...

    async def insert_token(self, token: Token, secret_hash: bytes) -> None: ...

    async def revoke_token(self, token_id: str) -> bool:
        """False when there is no such token."""
        ...

    async def token_by_secret(self, secret_hash: bytes) -> StoredToken | None: ...

    async def spend_token_use(self, token_id: str) -> None: ...

    async def removed_join_ms(self, public_key: bytes) -> int:
        """The last join time of a removed key (0 if none): a captured join must not revive it."""
        ...

    async def join_record(self, public_key: bytes) -> JoinRecord: ...

    async def record_join(self, public_key: bytes, token_id: str | None, time_ms: int) -> None:
        """Keep a join's signed time, and the token it used (None: keep the one it has)."""
        ...

    async def address_taken(self, address: IPAddress) -> bool: ...

    async def insert_peer(self, peer: Peer, created_at: float) -> None:
        """Conflict when the name (or address) is taken."""
        ...

    async def set_routes(
        self, public_key: bytes, routes: tuple[IPNetwork, ...], pending: tuple[IPNetwork, ...]
    ) -> None: ...

    async def set_relay_partners(self, public_key: bytes, partners: tuple[bytes, ...]) -> None:
        """The peers `public_key` reaches through the relay (a change other processes see)."""
        ...

    async def set_lan_endpoints(self, public_key: bytes, endpoints: tuple[Endpoint, ...]) -> None:
        """Where `public_key` says it is on its LANs (a change other processes see)."""
        ...

    async def set_credential_hash(self, public_key: bytes, credential_hash: bytes) -> None: ...

    async def delete_peer(self, public_key: bytes) -> None:
        """Remove the peer, remembering its last join time as a removed key's."""
        ...

    async def write_observations(self, peers: list[Peer], moved: list[Peer]) -> None:
        """Handshake times and replay floors the responder saw (`peers`), and the endpoints
        that moved (`moved`, some of `peers`). A shared store keeps, of two instances' moves,
        the one confirmed latest, and logs each move as a change so every instance (the
        writer too, should it lose) reloads the winner."""
        ...


class Store(Reader, Protocol):
    network_id: int

    def transaction(self) -> AbstractAsyncContextManager[Transaction]: ...

    def exclusive(self) -> AbstractAsyncContextManager[Reader]:
        """Reads that no transaction of this process interleaves with."""
        ...

    async def load_peers(self) -> list[StoredPeer]: ...

    async def list_tokens(self) -> list[Token]: ...

    async def latest_change(self) -> int: ...

    async def commit_marker(self) -> int:
        """A number that differs once another process committed: cheap to poll."""
        ...

    async def follow_changes(self, nudge: Callable[[], None]) -> None:
        """Until cancelled: call `nudge` whenever another process may have committed a change
        (following.py reads them from its last number, so a spurious nudge costs one read)."""
        ...

    async def beat_instance(
        self, own: ServingInstance, live_s: float, limit: int
    ) -> list[ServingInstance]:
        """Stamp `own` alive by the database's clock (one clock, whatever the hosts' say), and
        the instances stamped within `live_s`: `own` first, then the longest serving, `limit`
        at most."""
        ...

    async def retire_instance(self, instance_id: str) -> None:
        """A stopping instance leaves the list at once instead of when its stamp ages."""
        ...

    async def tidy(self, forget_instances_after_s: float) -> int:
        """Keep the bookkeeping bounded; the rows deleted. The change log keeps each key's
        latest change only: a follower needs which keys changed after its number, and a key's
        latest change is after it whenever any of its changes is. Instances not stamped for
        `forget_instances_after_s` (data folders no longer used) leave the table."""
        ...

    async def close(self) -> None: ...
