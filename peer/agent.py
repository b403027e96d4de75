"""`meshpeer run`: join, make the interface, follow the mesh, keep every path punched."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import ipaddress
import logging
import os
import re
import socket
import time
from collections.abc import Coroutine
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from meshpeer.common.events import set_within
from meshpeer.common.keys import encode_key
from meshpeer.common.tokens import decode as decode_token

from . import client, enrolment, relaying, resolved, waiting, watching
from .discovery import sighted
from .errors import AgentError, AgentFailed, BackendError, Stopped
from .host_routes import HostRoutes, rendezvous_addresses
from .instances import Failover
from .interface import (
    choose_backend,
    enable_forwarding,
    free_interface,
    make_interface,
    rendezvous_peer,
)
from .interface import tear_down as tear_down_interface
from .links import Links
from .live import Live
from .mesh import Mesh
from .plan import Plan
from .prechecks import check_port_free, check_same_mesh
from .roaming import Presence
from .state import Membership, StateDir, process_start
from .status import Identity, RendezvousState
from .supervise import supervised
from .timers import (
    BACKOFF_MAX_S,
    DNS_SD_POLL_S,
    RECONCILE_S,
    RELAY_RETRY_S,
)
from .uapi import UapiError
from .wireguard import Backend

logger = logging.getLogger("meshpeer.peer")
T = TypeVar("T")


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
        ifname = self.options.interface
        # Checked before joining: a run that cannot make its interface must not spend a token.
        await asyncio.to_thread(check_port_free, self.options.listen_port)
        await free_interface(self.links, ifname)
        backend = choose_backend(self.options.backend, self.links)
        await asyncio.to_thread(backend.check)
        membership, own_key = await self._until_stopped(self._membership())
        # A certificate seen before is not parsed again (pinning.py), and a new one is parsed
        # by the join process: cryptography stays out of this one.
        client.check_certificates_with(
            functools.partial(enrolment.certificate_pin, self.state.path)
        )
        if membership.tls_pin:
            client.remember_certificates(membership.tls_pin, self.state.certificates())
        routes = HostRoutes(self.links, ifname, self.options.accept_routes)
        try:
            await self._until_stopped(self._make_interface(backend, membership))
            if await asyncio.to_thread(resolved.available):
                await resolved.point_zone(ifname, membership.dns, membership.zone)
            live = await self._live(membership, own_key, backend, routes)
            await asyncio.to_thread(enable_forwarding, self.options.routes)
            await self._run_loops(live)
        finally:
            await routes.remove()
            await self._tear_down(backend)
        if self._failure is not None:
            raise self._failure

    async def _live(
        self, membership: Membership, own_key: bytes, backend: Backend, routes: HostRoutes
    ) -> Live:
        rendezvous = await asyncio.to_thread(rendezvous_addresses, membership)
        pid_start = await asyncio.to_thread(process_start, os.getpid())
        ifname = self.options.interface
        identity = Identity(membership.name, membership.address, ifname, backend.name, pid_start)
        mesh = Mesh(own_key, accept_routes=self.options.accept_routes)
        rendezvous_config = await rendezvous_peer(membership)
        mesh.relay_endpoint = rendezvous_config.endpoint
        state = RendezvousState(membership.api_url)
        network = ipaddress.ip_network(membership.network)
        port = self.options.listen_port
        presence = Presence(self.links, ifname, port, mesh, network, self._wake.set)
        live = Live(
            membership,
            mesh,
            backend,
            routes,
            rendezvous,
            state,
            identity,
            presence,
            rendezvous_config,
            Failover(membership.instance(), membership.instances),
        )
        live.protect(rendezvous)
        return live

    async def _run_loops(self, live: Live) -> None:
        """The loops, until a stop; then mDNS said goodbye to, within a bounded wait."""
        loops = {
            "watch": lambda: self._follow_rendezvous(live),
            "reconcile": lambda: self._reconcile_forever(live),
            "dns-sd": lambda: self._poll_dns_sd(live),
            "network": live.presence.follow,
            "lan-report": lambda: relaying.report_lan_forever(
                lambda: live.membership, live.presence.lan_report
            ),
        }
        tasks = [
            asyncio.create_task(supervised(name, loop), name=name) for name, loop in loops.items()
        ]
        for task in tasks:
            task.add_done_callback(self._task_ended)
        live.presence.start_lan(live.membership.name)
        await self._stopping.wait()
        await waiting.end(tasks)
        await live.presence.stop()

    def stop(self) -> None:
        self._stopping.set()

    async def _until_stopped(self, work: Coroutine[Any, Any, T]) -> T:
        """`work`'s result, or Stopped as soon as a stop is asked for (work is cancelled)."""
        task = asyncio.ensure_future(work)
        if await waiting.done_before(task, self._stopping):
            return task.result()
        raise Stopped

    def _task_ended(self, task: asyncio.Task[None]) -> None:
        """A loop that failed more often than supervise.py restarts it: stop, exit 1."""
        error = None if task.cancelled() else task.exception()
        if error is not None and self._failure is None:
            logger.error("%s; stopping", error)
            self._failure = AgentFailed(str(error))
            self.stop()

    async def _membership(self) -> tuple[Membership, bytes]:
        """Ours and our public key: joined now with the token, or as stored."""
        stored = self.state.membership()
        token_text = self.options.token
        if token_text is None:
            if stored is None:
                raise AgentError(
                    f"{self.options.state_dir} holds no membership yet: "
                    "run `meshpeer run --token TOKEN` once "
                    "(make one with `rendezvous token create`)"
                )
            known = self.state.public_key()
            return stored, known or (await enrolment.enrol(self.state.path)).public_key
        token = decode_token(token_text)
        check_same_mesh(stored, token, self.options.force)
        name = self.options.name or (stored.name if stored else default_name())
        backoff = 1.0
        while True:
            time_ms = int(time.time() * 1000)
            enrolled = await enrolment.enrol(
                self.state.path, token_text, name, self.options.routes, time_ms
            )
            if enrolled.joined:
                break
            if enrolled.refused is not None:
                # A service unit passes the same token at every start; once it has expired or
                # is used up, a peer that already joined this rendezvous resumes as it was.
                if stored is None or stored.rendezvous_key != encode_key(token.rendezvous_key):
                    raise client.JoinRefused(enrolled.refused)
                logger.warning(
                    "token refused (%s): resuming the stored membership", enrolled.refused
                )
                return stored, enrolled.public_key
            logger.warning("%s; retrying in %.0f s", enrolled.unreachable, backoff)
            await asyncio.sleep(backoff)  # a stop cancels it (_until_stopped)
            backoff = min(backoff * 2, BACKOFF_MAX_S)
        membership = self.state.membership()  # as the join process saved it
        if membership is None:
            raise AgentFailed("the join process joined but saved no membership")
        logger.info(
            "joined as %s (%s) in %s", membership.name, membership.address, membership.network
        )
        _log_pending_routes(membership.name, enrolled.pending)
        return membership, enrolled.public_key

    async def _make_interface(self, backend: Backend, membership: Membership) -> None:
        private_key = self.state.private_key()
        if private_key is None:
            raise AgentError(f"{self.state.path}/key was removed while `run` started; start again")
        ifname, port = self.options.interface, self.options.listen_port
        await make_interface(backend, self.links, membership, private_key, ifname, port)

    # -- following the rendezvous -------------------------------------------------------------

    async def _follow_rendezvous(self, live: Live) -> None:
        await watching.follow_rendezvous(live, self.state, self._wake.set, self._removed)

    def _removed(self, why: str) -> None:
        logger.error("%s: stopping; join again with a new token to come back", why)
        self.exit_code = 2  # the operator's decision: systemd must not restart us
        self.stop()

    async def _poll_dns_sd(self, live: Live) -> None:
        """DNS-SD from the rendezvous's zone: a second endpoint for each peer the API lists,
        tried after the API's own when a path is down (plain DNS proves nothing more). Both
        come from one registry, and the watch brings a change within 100 ms: so the zone is
        read only while a path is down and the watch is not answering, never at start. At
        100,000 peers, every agent reading it every 30 s would load the rendezvous's DNS for
        nothing; and dnspython is ~4 MiB of an agent's 40 (issue 17)."""
        while True:
            await asyncio.sleep(self.options.dns_sd_poll_s)
            if live.mesh.any_path_down() and not live.rendezvous.answering:
                await self._read_dns_sd(live)

    async def _read_dns_sd(self, live: Live) -> None:
        # Here, not at the top: dnspython holds ~2.6 MiB resident for the agent's life, and an
        # agent whose paths stay up never reads the zone. Loaded in a thread, as its tens of ms
        # of file reads would stall the loop; the import below then finds it loaded.
        await asyncio.to_thread(importlib.import_module, f"{__package__}.dnssd")
        from . import dnssd

        membership = live.membership  # read each time: the agent may have moved
        try:
            server = await watching.dns_server(membership)
            found = await dnssd.discover(server, membership.zone, live.mesh.peers)
        except (dnssd.ZoneUnreadable, OSError, ValueError) as error:
            logger.debug("DNS-SD from %s failed: %s", membership.dns, error)
        else:
            live.mesh.merge(sighted("dns-sd", found))

    # -- reconciling --------------------------------------------------------------------------

    async def _reconcile_forever(self, live: Live) -> None:
        while True:
            next_round_s = RECONCILE_S
            try:
                if not await live.backend.alive():
                    await self._remake_interface(live)
                next_round_s = await self.reconcile(live)
            except (BackendError, UapiError, OSError) as error:
                logger.warning("could not configure the interface yet: %s", error)
            await set_within(self._wake, next_round_s)
            self._wake.clear()

    async def _remake_interface(self, live: Live) -> None:
        """wireguard-go died (or someone deleted the link): make it again, peers and all."""
        logger.warning("interface %s is gone; making it again", self.options.interface)
        await live.backend.destroy()
        live.mesh.forget_device()  # our routes went with the link: the next round adds them
        try:
            await self._make_interface(live.backend, live.membership)
        except BaseException:
            await live.backend.destroy()  # not alive: the next round tries again from scratch
            raise

    async def reconcile(self, live: Live) -> float:
        """One round: gather what the core needs, let it plan, apply the plan. The seconds
        until the core wants the next one."""
        moves = live.presence.moves
        device = await live.backend.status()
        table = await live.routes.read_table() if live.mesh.wants_route_table() else None
        if live.presence.moves != moves:
            # The host moved while we read: bytes counted since came before the move, and the
            # core would take them for the peer's answer from the new network (pathview.is_up).
            device = await live.backend.status()
        plan = live.mesh.plan(device, time.time(), live.surroundings(table))
        await self._apply(live, plan)
        live.presence.ask_for_neighbours(time.monotonic())
        return plan.next_round_s

    async def _apply(self, live: Live, plan: Plan) -> None:
        if plan.kick_rendezvous:
            # First: the rendezvous publishes our new mapping while the peers are punched.
            await live.backend.apply([replace(live.rendezvous_peer, kick=True)], [])
        if plan.set_peers or plan.remove:
            await live.backend.apply(plan.set_peers, plan.remove)
        for event in plan.events:
            logger.info("%s", event)
        # After the peers' AllowedIPs: a route into the link ahead of them would drop packets.
        await live.routes.install(plan.routes)
        if plan.relay_partners is not None and time.monotonic() >= live.relay_retry_at:
            if not await relaying.tell_relay(live.membership, live.mesh, plan.relay_partners):
                live.relay_retry_at = time.monotonic() + RELAY_RETRY_S
        if plan.status is not None and plan.status != live.last_status:
            # Most seconds nothing changed: no write at all.
            await asyncio.to_thread(self.state.write_status, plan.status)
            live.last_status = plan.status

    async def _tear_down(self, backend: Backend) -> None:
        await tear_down_interface(backend, self.links, self.options.interface)
        with contextlib.suppress(OSError):
            await asyncio.to_thread((self.options.state_dir / "status.json").unlink)


def _log_pending_routes(name: str, pending: tuple[str, ...]) -> None:
    if pending:
        logger.warning(
            "routes %s wait for the operator: `rendezvous peer routes approve %s`",
            ",".join(pending),
            name,
        )


def default_name() -> str:
    """This host's name as a DNS label."""
    label = re.sub(r"[^a-z0-9-]+", "-", socket.gethostname().split(".")[0].lower()).strip("-")
    return label[:63] or "peer"
