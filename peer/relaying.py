"""The agent's side of the relay that is not the mesh core's decision: telling the rendezvous
which peers we relay with, and starting over after the rendezvous restarted."""

from __future__ import annotations

import logging
from dataclasses import replace

from . import client
from .errors import BackendError
from .mesh import Mesh
from .state import Membership
from .uapi import PeerConfig, UapiError
from .wireguard import Backend

logger = logging.getLogger("meshpeer.peer")


async def tell_relay(membership: Membership, mesh: Mesh, partners: frozenset[bytes]) -> bool:
    """The rendezvous relays only for pairs it holds: tell it ours (the next round points the
    peers at it). False when it could not be told: ask again later."""
    try:
        mesh.relay_stored(await client.set_relay(membership, partners))
    except (client.Unreachable, client.JoinRefused) as error:  # removed: the watch says so
        logger.warning("could not ask the rendezvous to relay: %s", error)
        return False
    return True


async def renew_after_restart(rendezvous: PeerConfig, backend: Backend, mesh: Mesh) -> None:
    """The rendezvous restarted (a new epoch): it lost its sessions with us and the relay's
    index routes. Handshake with it again now, so it learns our mapping at once rather than at
    the next rekey (two minutes), and let relayed peers handshake again through it."""
    logger.info("the rendezvous restarted: handshaking with it and relayed peers again")
    renewed = replace(rendezvous, kick=True)
    try:
        await backend.apply([renewed], [renewed.public_key])
    except (BackendError, UapiError, OSError) as error:
        logger.warning("could not renew the session with the rendezvous: %s", error)
    mesh.rendezvous_restarted()
