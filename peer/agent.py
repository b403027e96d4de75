"""`meshpeer run`: join, make the interface, follow the mesh, keep every path punched."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import random
import re
import socket
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import dns.exception
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from meshpeer.common.endpoints import IPAddress
from meshpeer.common.keys import encode_key, parse_key
from meshpeer.common.tokens import decode as decode_token

from . import client, dnssd, resolved
from .errors import AgentError, AgentFailed, Stopped
from .host_routes import HostRoutes, rendezvous_addresses
from .lan import LanDiscovery, Sightings
from .liveness import Liveness
from .mesh import RENDEZVOUS_KEEPALIVE_S, Mesh, remote_from_json
from .prechecks import check_port_free, check_same_mesh
from .state import Membership, StateDir, process_start
from .status import Identity, RendezvousState, document
from .supervise import supervised
from .uapi import DeviceStatus, PeerConfig, UapiError
from .wireguard import (
    Backend,
    BackendError,
    KernelBackend,
    Links,
    UserspaceBackend,
    kernel_has_wireguard,
)

logger = logging.getLogger("meshpeer.peer")
T = TypeVar("T")

MTU = 1420  # 1500 minus WireGuard's 80 bytes over IPv6: safe on any ordinary path
RECONCILE_S = 1.0
BACKOFF_MAX_S = 30.0
STOP_WAIT_S = 0.5  # what one step of stopping may wait for: the whole stop stays under 2 s
# The watch API brings news within 100 ms; DNS-SD is the slow safety net (and wgsd's way).
DNS_SD_POLL_S = 30.0


@dataclass(frozen=True, slots=True)
class Options:
    state_dir: Path
    token: str | None = None
    interface: str = "wg0"
    listen_port: int = 51820
    backend: str = "auto"
    name: str | None = None
    routes: tuple[str, ...] = ()
    dns_sd_poll_s: float = DNS_SD_POLL_S
    force: bool = False  # join another rendezvous's mesh even though this machine is in one
    accept_routes: bool = False  # install the routes other peers advertise (host_routes.py)


@dataclass(slots=True)
class _Live:
    """What a running agent works with, once it has joined and made its interface."""

    membership: Membership
    mesh: Mesh
    backend: Backend
    routes: HostRoutes
    rendezvous_addresses: frozenset[IPAddress]
    rendezvous: RendezvousState
    liveness: Liveness = field(default_factory=Liveness)
    last_status: dict[str, Any] | None = None


class Agent:
    def __init__(self, options: Options) -> None:
        self.options = options
        self.state = StateDir(options.state_dir)
        self.links = Links()
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self.exit_code = 0  # what `meshpeer run` exits with once stopped
        self._failure: AgentFailed | None = None

    # -- starting -----------------------------------------------------------------------------

    async def run(self) -> None:
        self.state.prepare()
        with self.state.lock():  # one `run` per state folder: two fought over wg0
            try:
                await self._run()
            except Stopped:
                logger.info("stopped while starting")

    async def _run(self) -> None:
        private_key = self.state.private_key()
        own_key = private_key.public_key().public_bytes_raw()
        # Checked before joining: a run that cannot make its interface must not spend a token.
        check_port_free(self.options.listen_port)
        await self._free_interface()
        backend = choose_backend(self.options.backend, self.links)
        backend.check()
        membership = await self._until_stopped(self._membership(private_key))
        routes = HostRoutes(self.links, self.options.interface, self.options.accept_routes)
        try:
            await self._until_stopped(self._make_interface(backend, membership, private_key))
            if resolved.available():
                await resolved.point_zone(self.options.interface, membership.dns, membership.zone)
            rendezvous = await asyncio.to_thread(rendezvous_addresses, membership)
            state = RendezvousState(membership.api_url)
            live = _Live(membership, Mesh(own_key), backend, routes, rendezvous, state)
            await asyncio.to_thread(self._enable_forwarding)
            loops = {
                "watch": lambda: self._follow_rendezvous(live),
                "reconcile": lambda: self._reconcile_forever(live),
                "dns-sd": lambda: self._poll_dns_sd(live),
            }
            tasks = [
                asyncio.create_task(supervised(name, loop), name=name)
                for name, loop in loops.items()
            ]
            for task in tasks:
                task.add_done_callback(self._task_ended)
            # Not awaited first: announcing on mDNS probes the name for about a second, and
            # the punch to the other peers must not wait for it (it did: new pairs took 1.3 s).
            lan_start = asyncio.create_task(self._start_lan(live), name="mdns")
            await self._stopping.wait()
            await _end(tasks)
            await _end([lan_start])
            if lan_start.done() and not lan_start.cancelled() and not lan_start.exception():
                await _bounded(lan_start.result().stop())
        finally:
            await routes.remove()
            await self._tear_down(backend)
        if self._failure is not None:
            raise self._failure

    def stop(self) -> None:
        self._stopping.set()

    async def _until_stopped(self, work: Coroutine[Any, Any, T]) -> T:
        """`work`'s result, or Stopped as soon as a stop is asked for (work is cancelled)."""
        task = asyncio.ensure_future(work)
        stopping = asyncio.ensure_future(self._stopping.wait())
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if task.done():
            return task.result()
        await _end([task])
        raise Stopped

    def _task_ended(self, task: asyncio.Task[None]) -> None:
        """A loop that failed more often than supervise.py restarts it: stop, exit 1."""
        error = None if task.cancelled() else task.exception()
        if error is not None and self._failure is None:
            logger.error("%s; stopping", error)
            self._failure = AgentFailed(str(error))
            self.stop()

    async def _membership(self, private_key: X25519PrivateKey) -> Membership:
        stored = self.state.membership()
        token_text = self.options.token
        if token_text is None:
            if stored is None:
                raise AgentError(
                    f"{self.options.state_dir} holds no membership yet: "
                    "run `meshpeer run --token TOKEN` once "
                    "(make one with `rendezvous token create`)"
                )
            return stored
        token = decode_token(token_text)
        check_same_mesh(stored, token, self.options.force)
        name = self.options.name or (stored.name if stored else default_name())
        backoff = 1.0
        while True:
            try:
                membership, answer = await client.join(
                    token, private_key, name, self.options.routes, int(time.time() * 1000)
                )
                break
            except client.JoinRefused as error:
                # A service unit passes the same token at every start; once it has expired or
                # is used up, a peer that already joined this rendezvous resumes as it was.
                if stored is None or stored.rendezvous_key != encode_key(token.rendezvous_key):
                    raise
                logger.warning("token refused (%s): resuming the stored membership", error)
                return stored
            except client.Unreachable as error:
                logger.warning("%s; retrying in %.0f s", error, backoff)
                await asyncio.sleep(backoff)  # a stop cancels it (_until_stopped)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
        self.state.save_membership(membership)
        logger.info(
            "joined as %s (%s) in %s", membership.name, membership.address, membership.network
        )
        _log_pending_routes(membership.name, answer)
        return membership

    async def _free_interface(self) -> None:
        ifname = self.options.interface
        if await asyncio.to_thread(self.links.index, ifname) is None:
            return
        if not await asyncio.to_thread(self.links.is_ours, ifname):
            raise AgentError(
                f"interface {ifname} exists and meshpeer did not make it: "
                "choose another with --interface"
            )
        logger.info("removing %s left over from an earlier run", ifname)
        await asyncio.to_thread(self.links.delete, ifname)

    async def _make_interface(
        self, backend: Backend, membership: Membership, private_key: X25519PrivateKey
    ) -> None:
        ifname = self.options.interface
        await backend.create(ifname, private_key.private_bytes_raw(), self.options.listen_port)
        prefix = ipaddress.ip_network(membership.network).prefixlen
        await asyncio.to_thread(self.links.claim, ifname, f"{membership.address}/{prefix}", MTU)
        await backend.apply([rendezvous_peer(membership)], [])
        logger.info(
            "interface %s up (%s backend), listening on udp/%d",
            ifname,
            backend.name,
            self.options.listen_port,
        )

    async def _start_lan(self, live: _Live) -> LanDiscovery:
        """mDNS on the LAN: peers behind the same NAT reach each other without hairpinning."""
        interfaces = await asyncio.to_thread(self.links.lan_interfaces, self.options.interface)
        mesh_network = ipaddress.ip_network(live.membership.network)
        interfaces = [i for i in interfaces if i.ip not in mesh_network]
        live.mesh.set_own_lan(interfaces)
        addresses = [str(interface.ip) for interface in interfaces]

        def on_sightings(sightings: Sightings) -> None:
            live.mesh.record_hints("lan", sightings)
            self._wake.set()

        lan = LanDiscovery(
            live.mesh.own_key,
            live.membership.name,
            self.options.listen_port,
            addresses,
            on_sightings,
        )
        try:
            await lan.start()
        except OSError as error:
            logger.warning("mDNS discovery off: %s", error)
        return lan

    def _enable_forwarding(self) -> None:
        """A peer that carries a LAN for the mesh must forward between them. The switch is the
        host's, not the link's: from then on the host forwards anything any peer sends it to
        any network it can reach, not only to the advertised LAN (the README says how to
        narrow that with nftables)."""
        versions = {ipaddress.ip_network(route).version for route in self.options.routes}
        for version in versions:
            knob = "ipv4/ip_forward" if version == 4 else "ipv6/conf/all/forwarding"
            Path("/proc/sys/net", knob).write_text("1\n")
            logger.warning(
                "forwarding on for the whole host (net.%s=1) to carry %s: mesh peers can reach "
                "whatever this host routes to unless a firewall limits them to it",
                knob.replace("/", "."),
                ",".join(self.options.routes),
            )

    # -- following the rendezvous -------------------------------------------------------------

    async def _follow_rendezvous(self, live: _Live) -> None:
        """The watch API, long-polled; on failure, back off and keep the tunnels as they are."""
        epoch: str | None = None
        revision: int | None = None
        backoff = 1.0
        while True:
            try:
                answer = await client.watch(
                    live.membership, epoch, revision, client.WATCH_TIMEOUT_S
                )
            except client.JoinRefused as error:
                logger.error("%s: stopping; join again with a new token to come back", error)
                self.exit_code = 2  # the operator's decision: systemd must not restart us
                self.stop()
                return
            except client.Unreachable as error:
                live.rendezvous.failed(time.time())
                logger.warning("%s; retrying in %.0f s", error, backoff)
                await asyncio.sleep(backoff * random.uniform(0.8, 1.2))  # noqa: S311 - jitter
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                continue
            backoff = 1.0
            silent_for = live.rendezvous.answered(time.time())
            if silent_for is not None:
                logger.info("the rendezvous answers again (after %.0f s)", silent_for)
            mapping = own_endpoint(answer.peers, live.mesh.own_key)
            if mapping is not None:  # a delta lists us only when our mapping moved
                live.rendezvous.own_endpoint = mapping
            peers = [p for p in map(remote_from_json, answer.peers) if p is not None]
            if answer.full:
                live.mesh.replace_all(peers)
            else:
                removed = [parse_key(key) for key in answer.removed]
                live.mesh.update(peers, removed)
            epoch, revision = answer.epoch, answer.revision
            self._wake.set()

    async def _poll_dns_sd(self, live: _Live) -> None:
        """DNS-SD from the rendezvous's zone: a second endpoint for each peer the API lists,
        tried after the API's own when a path is down (plain DNS proves nothing more)."""
        host, _, port = live.membership.dns.rpartition(":")
        server = (host.strip("[]"), int(port))
        while True:
            try:
                found = await dnssd.discover(server, live.membership.zone, live.mesh.peers)
            except (dns.exception.DNSException, OSError) as error:
                logger.debug("DNS-SD from %s failed: %s", live.membership.dns, error)
            else:
                live.mesh.record_hints("dns-sd", found)
            await asyncio.sleep(self.options.dns_sd_poll_s)

    # -- reconciling --------------------------------------------------------------------------

    async def _reconcile_forever(self, live: _Live) -> None:
        while True:
            try:
                if not live.backend.alive():
                    await self._remake_interface(live)
                await self.reconcile(live)
            except (BackendError, UapiError, OSError) as error:
                logger.warning("could not configure the interface yet: %s", error)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), RECONCILE_S)
            self._wake.clear()

    async def _remake_interface(self, live: _Live) -> None:
        """wireguard-go died (or someone deleted the link): make it again, peers and all."""
        logger.warning("interface %s is gone; making it again", self.options.interface)
        await live.backend.destroy()
        live.mesh.forget_device()  # our routes went with the link: the next round adds them
        try:
            await self._make_interface(live.backend, live.membership, self.state.private_key())
        except BaseException:
            await live.backend.destroy()  # not alive: the next round tries again from scratch
            raise

    async def reconcile(self, live: _Live) -> None:
        device = await live.backend.status()
        accepted = await live.routes.decide(
            live.mesh, device, live.membership, live.rendezvous_addresses
        )
        live.mesh.accept_routes(accepted)  # AllowedIPs: no route unless accepted
        now = time.time()
        live.liveness.observe(device, now)
        plan = live.mesh.plan(device, now)
        if plan.set_peers or plan.remove:
            await live.backend.apply(plan.set_peers, plan.remove)
        for event in plan.events:
            logger.info("%s", event)
        # After the peers' AllowedIPs: a route into the link ahead of them would drop packets.
        await live.routes.install()
        status = self.status(live, device)
        if status != live.last_status:  # most seconds nothing changed: no write at all
            await asyncio.to_thread(self.state.write_status, status)
            live.last_status = status

    def status(self, live: _Live, device: DeviceStatus) -> dict[str, Any]:
        identity = Identity(
            live.membership.name,
            live.membership.address,
            self.options.interface,
            live.backend.name,
            process_start(os.getpid()),
        )
        now = time.time()
        return document(identity, live.mesh, device, live.liveness, live.rendezvous, now)

    async def _tear_down(self, backend: Backend) -> None:
        with contextlib.suppress(BackendError, OSError):
            await backend.destroy()
        with contextlib.suppress(OSError):
            if await asyncio.to_thread(self.links.is_ours, self.options.interface):
                await asyncio.to_thread(self.links.delete, self.options.interface)
        logger.info("interface %s removed", self.options.interface)
        with contextlib.suppress(OSError):
            (self.options.state_dir / "status.json").unlink()


async def _end(tasks: list[asyncio.Task[Any]] | list[asyncio.Future[Any]]) -> None:
    """Cancel and wait for tasks, but never for long: a task that swallows its cancellation
    (dnspython's queries on Python 3.11 did) must not keep the agent from stopping."""
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=STOP_WAIT_S)


async def _bounded(work: Coroutine[Any, Any, None]) -> None:
    with contextlib.suppress(TimeoutError, OSError):
        await asyncio.wait_for(work, STOP_WAIT_S)


def own_endpoint(peers: list[dict[str, Any]], own_key: bytes) -> str | None:
    """This machine's NAT mapping from a watch answer that lists it (a full one does)."""
    mine = encode_key(own_key)
    for item in peers:
        if item.get("public_key") == mine and isinstance(item.get("endpoint"), str):
            return str(item["endpoint"])[:64]
    return None


def rendezvous_peer(membership: Membership) -> PeerConfig:
    """The rendezvous as a WireGuard peer: its mesh address only, and a short keepalive."""
    host, _, port = membership.rendezvous_endpoint.rpartition(":")
    address = socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_DGRAM)[0][4][0]
    mesh_address = ipaddress.ip_address(membership.rendezvous_address)
    return PeerConfig(
        parse_key(membership.rendezvous_key),
        (f"{mesh_address}/{mesh_address.max_prefixlen}",),
        (str(address), int(port)),
        RENDEZVOUS_KEEPALIVE_S,
    )


def _log_pending_routes(name: str, answer: dict[str, Any]) -> None:
    pending = answer.get("peer", {}).get("pending_routes") or []
    if pending and isinstance(pending, list):
        routes = ",".join(str(route) for route in pending[:8])
        logger.warning(
            "routes %s wait for the operator: `rendezvous peer routes approve %s`", routes, name
        )


def choose_backend(choice: str, links: Links) -> Backend:
    if choice == "kernel" or (choice == "auto" and kernel_has_wireguard()):
        return KernelBackend(links)
    return UserspaceBackend()


def default_name() -> str:
    """This host's name as a DNS label."""
    label = re.sub(r"[^a-z0-9-]+", "-", socket.gethostname().split(".")[0].lower()).strip("-")
    return label[:63] or "peer"
