"""Following the rendezvous: the watch API, long-polled, and moving to another rendezvous
instance when the one in use stops answering (instances.py says when and which)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import socket
import time
from collections.abc import Callable
from dataclasses import replace

from meshpeer.common.endpoints import Endpoint, format_endpoint, parse_host_port, unicast

from . import client, relaying, resolved, waiting
from .errors import BackendError
from .host_routes import rendezvous_addresses
from .instances import Instance
from .interface import rendezvous_peer
from .live import Live
from .state import Membership, StateDir
from .status import RendezvousState
from .timers import BACKOFF_MAX_S, FAILOVER_AFTER_S, LIST_SAVE_EVERY_S, WATCH_TIMEOUT_S
from .uapi import UapiError

logger = logging.getLogger("meshpeer.peer")


async def follow_rendezvous(
    live: Live, state: StateDir, wake: Callable[[], None], removed: Callable[[str], None]
) -> None:
    """The watch API, long-polled; on failure, back off and keep the tunnels as they are, and
    move to the next instance once this one has been silent for FAILOVER_AFTER_S."""
    epoch: str | None = None
    revision: int | None = None
    backoff = 1.0
    while True:
        try:
            watching = client.watch(live.membership, epoch, revision, WATCH_TIMEOUT_S)
            answer = await waiting.unless(live.presence.moved, watching)
            if answer is None:  # its connection left from the old address: ask again
                revision = None  # for the whole list, which names our new mapping
                continue  # (the core forgot the old one, and a delta may not name us)
        except client.JoinRefused as error:
            removed(str(error))
            return
        except client.Unreachable as error:
            live.rendezvous.failed(time.time())
            following = live.failover.failed(time.monotonic())
            silent = f"has not answered for {FAILOVER_AFTER_S:.0f} s"
            if following is not None and await _move(live, state, following, silent):
                epoch = revision = None  # another instance: its epoch, and the whole list
                backoff = 1.0
                continue
            logger.warning("%s; retrying in %.0f s", error, backoff)
            await asyncio.sleep(backoff * random.uniform(0.8, 1.2))  # noqa: S311 - jitter
            backoff = min(backoff * 2, BACKOFF_MAX_S)
            continue
        backoff = 1.0
        live.failover.answered(time.monotonic())
        silent_for = live.rendezvous.answered(time.time())
        if silent_for is not None:
            logger.info("the rendezvous answers again (after %.0f s)", silent_for)
        if answer.instances is not None:
            await _heard(live, state, answer.instances)
        mapping = answer.endpoint_of(live.mesh.own_key)
        if mapping is not None:  # a delta lists us only when our mapping moved
            live.rendezvous.own_endpoint = format_endpoint(mapping)
        live.mesh.merge(answer.discovery())
        if epoch is not None and answer.epoch != epoch:
            await relaying.renew_after_restart(live.rendezvous_peer, live.backend, live.mesh)
        epoch, revision = answer.epoch, answer.revision
        wake()
        home = live.failover.home(time.monotonic())
        if home is not None and await _move(
            live, state, home, "is not the first instance, which is live again"
        ):
            epoch = revision = None


async def _move(live: Live, state: StateDir, instance: Instance, why: str) -> bool:
    """move_to, and the failover's state told of how it went."""
    moved = await move_to(live, state, instance, why)
    if moved:
        live.failover.moved(instance, time.monotonic())
    else:
        live.failover.unusable(instance, time.monotonic())
    return moved


async def _heard(live: Live, state: StateDir, listed: tuple[Instance, ...]) -> None:
    """The instance list as the one in use lists it: kept, with the membership (a restart
    starts from it), and every instance's addresses kept out of accepted routes."""
    if live.membership.tls_pin is None:
        # Behind the operator's TLS proxy (no pin): any listed URL with a certificate some CA
        # signed would get our credential, and its 401 would stop us. The proxy's URL, the
        # token's, is the way in; failing over is the proxy's business.
        return
    live.failover.heard(listed, time.monotonic())
    live.rendezvous.others = tuple(instance.api_url for instance in listed[1:])
    if listed == live.membership.instances:
        return
    live.membership = replace(live.membership, instances=listed)
    live.protect()
    now = time.monotonic()
    if now - live.list_saved_at >= LIST_SAVE_EVERY_S:  # a churning list is not a disk's work
        live.list_saved_at = now
        await asyncio.to_thread(state.save_membership, live.membership)


def outside_mesh(host: str, network: str) -> bool:
    """An address the rendezvous may have: unicast (not loopback, multicast, link-local ...),
    and not in the mesh, where packets to it would go into the tunnel they carry."""
    address = ipaddress.ip_address(host)
    return unicast(address) and address not in ipaddress.ip_network(network)


async def dns_server(membership: Membership) -> Endpoint:
    """The rendezvous's DNS server as an address (it may be listed by name), outside the mesh;
    ValueError otherwise."""
    host, port = parse_host_port(membership.dns, "the rendezvous's DNS address")
    found = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    address = str(found[0][4][0])
    if not outside_mesh(address, membership.network):
        raise ValueError(f"{address} is not an address the rendezvous's DNS may have")
    return address, port


async def move_to(live: Live, state: StateDir, instance: Instance, why: str) -> bool:
    """Use `instance` from now on: its API, its WireGuard endpoint (the same rendezvous key,
    so the same WireGuard peer, pointed elsewhere), its relay and its DNS. False, and nothing
    changed, when its endpoint does not resolve to a unicast address."""
    before = live.membership.api_url
    membership = live.membership.moved_to(instance)
    try:
        peer = await rendezvous_peer(membership)
    except OSError as error:
        logger.warning("cannot move to the rendezvous at %s: %s", instance.api_url, error)
        return False
    if peer.endpoint is None or not outside_mesh(peer.endpoint[0], membership.network):
        where = format_endpoint(peer.endpoint) if peer.endpoint else instance.endpoint
        logger.warning("cannot move to the rendezvous at %s: %s is not usable", instance, where)
        return False
    logger.warning("the rendezvous at %s %s: moving to %s", before, why, instance.api_url)
    live.membership, live.rendezvous_peer = membership, peer
    others = tuple(known.api_url for known in live.failover.known if known != instance)
    live.rendezvous = RendezvousState(instance.api_url, others=others)
    live.mesh.relay_moved(peer.endpoint)
    try:
        # Removed and set again: a new session at once. The old one's keys are the dead
        # instance's; the new one knows nothing of them (it would take our data for a relay's).
        await live.backend.apply([replace(peer, kick=True)], [peer.public_key])
    except (BackendError, UapiError, OSError) as error:  # the next round's kick sets it again
        logger.warning("could not point WireGuard at the rendezvous yet: %s", error)
    await asyncio.to_thread(state.save_membership, membership)
    live.protect(await asyncio.to_thread(rendezvous_addresses, membership))
    if await asyncio.to_thread(resolved.available):
        try:
            server = format_endpoint(await dns_server(membership))
        except (OSError, ValueError) as error:
            logger.warning("not pointing the zone at %s: %s", membership.dns, error)
        else:
            await resolved.point_zone(live.identity.interface, server, membership.zone)
    return True
