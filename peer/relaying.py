"""What the agent tells the rendezvous beyond the mesh core's decisions: which peers we relay
with, starting over after the rendezvous restarted, and where we are on our LANs."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import replace

from meshpeer.common.endpoints import Endpoint, format_endpoint

from . import client
from .errors import BackendError
from .lanreport import LanReport
from .mesh import Mesh
from .state import Membership
from .timers import LAN_REPORT_CHECK_S
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


async def report_lan_forever(membership: Callable[[], Membership], report: LanReport) -> None:
    """Our LAN endpoints to the rendezvous whenever they are not what it holds (lanreport.py);
    a loop of its own, so an unreachable rendezvous never holds up a reconcile round. The
    membership is asked for each time: the agent may have moved to another instance."""
    while True:
        endpoints = report.due(time.monotonic())
        if endpoints is not None:
            try:
                report.told(await client.set_lan(membership(), endpoints))
                logger.info("told the rendezvous our LAN endpoints: %s", _listed(endpoints))
            except (client.Unreachable, client.JoinRefused) as error:  # removed: the watch says
                logger.warning("could not tell the rendezvous our LAN endpoints: %s", error)
                report.failed(time.monotonic())
        await asyncio.sleep(LAN_REPORT_CHECK_S)


def _listed(endpoints: tuple[Endpoint, ...]) -> str:
    return ", ".join(map(format_endpoint, endpoints)) or "none"


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
