"""What `meshpeer status` shows: the document `run` writes to status.json (sans-I/O).

Per peer: its path, whether it answers (online: traffic within the last 30 s), when it was
last heard from, bytes each way. For this machine: its NAT mapping as the rendezvous sees it,
and whether the rendezvous answers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from meshpeer.common.endpoints import format_endpoint
from meshpeer.common.keys import encode_key

from .liveness import Liveness
from .uapi import DeviceStatus

if TYPE_CHECKING:  # the core computes the document (mesh.py): no import cycle at run time
    from .mesh import Mesh


@dataclass(slots=True)
class RendezvousState:
    """How the watch on the rendezvous goes, as the agent last saw it."""

    url: str
    answering: bool = False
    since: float | None = None  # when it started answering, or stopped
    own_endpoint: str | None = None  # this machine's NAT mapping, as the rendezvous sees it
    # The other instances serving the mesh, as this one lists them live (instances.py): where
    # the agent goes if this one stops answering.
    others: tuple[str, ...] = ()

    def answered(self, now: float) -> float | None:
        """Record an answer; how long it had not answered, if it had not."""
        silent_for = None if self.answering or self.since is None else now - self.since
        if not self.answering:
            self.answering, self.since = True, now
        return silent_for

    def failed(self, now: float) -> None:
        if self.answering or self.since is None:
            self.answering, self.since = False, now


@dataclass(frozen=True, slots=True)
class Identity:
    name: str
    address: str
    interface: str
    backend: str
    pid_start: int | None


def document(
    identity: Identity,
    mesh: Mesh,
    device: DeviceStatus,
    liveness: Liveness,
    rendezvous: RendezvousState,
    now: float,
) -> dict[str, Any]:
    peers = [
        _peer(mesh, device, liveness, key, now)
        for key, _ in sorted(mesh.peers.items(), key=lambda item: item[1].name)
    ]
    return {
        "public_key": encode_key(mesh.own_key),
        "name": identity.name,
        "address": identity.address,
        "endpoint": rendezvous.own_endpoint,
        "interface": identity.interface,
        "backend": identity.backend,
        "rendezvous": {
            "url": rendezvous.url,
            "answering": rendezvous.answering,
            "since": _seconds(rendezvous.since),
            "others": list(rendezvous.others),
        },
        "pid": os.getpid(),
        "pid_start": identity.pid_start,
        "peers": peers,
    }


def _peer(
    mesh: Mesh, device: DeviceStatus, liveness: Liveness, key: bytes, now: float
) -> dict[str, Any]:
    peer, seen = mesh.peers[key], device.peers.get(key)
    endpoint = seen.endpoint if seen and seen.endpoint else peer.endpoint
    return {
        "name": peer.name,
        "public_key": encode_key(key),
        "address": peer.address,
        "endpoint": format_endpoint(endpoint) if endpoint else None,
        "path": mesh.path(key),
        "online": liveness.online(key, now),
        "last_seen": _seconds(liveness.last_seen(key)),
        "latest_handshake": _seconds(seen.latest_handshake if seen else None),
        "rx_bytes": seen.rx_bytes if seen else 0,
        "tx_bytes": seen.tx_bytes if seen else 0,
        "routes": list(peer.routes),
    }


def _seconds(moment: float | None) -> int | None:
    return int(moment) if moment else None
