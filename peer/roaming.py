"""This host on its networks: mDNS on its current LAN addresses, and following it when it moves.

A laptop carried to another network keeps `meshpeer run` running. netlink tells of the change
(netwatch.py); when the view of addresses and gateways really moved, the mesh core sets every
endpoint again at its next round, the rendezvous's first (mesh.py, `Mesh.roamed`), the watch
asks again from the new address (`moved`), and mDNS moves to the new addresses.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Callable

from pyroute2.netlink.exceptions import NetlinkError

from . import neighbours, netwatch
from .discovery import sighted
from .lan import LanDiscovery, Sightings
from .lanreport import LanReport
from .links import Links, Uplinks
from .mesh import Mesh
from .waiting import bounded, end

logger = logging.getLogger("meshpeer.peer")


class Presence:
    def __init__(
        self,
        links: Links,
        ifname: str,
        listen_port: int,
        mesh: Mesh,
        mesh_network: ipaddress.IPv4Network | ipaddress.IPv6Network,
        wake: Callable[[], None],
    ) -> None:
        self.links = links
        self.ifname = ifname
        self.listen_port = listen_port
        self.mesh = mesh
        self.mesh_network = mesh_network
        self.name = ""
        self._wake = wake
        self.moved = asyncio.Event()  # set at each roam, then cleared: what waits, wakes
        self.uplinks: Uplinks | None = None
        self._lan: asyncio.Task[LanDiscovery] | None = None
        self.lan_report = LanReport()  # what mDNS announces, for PUT /v1/lan (relaying.py)
        self.moves = 0  # counts roams: what was read before one (mDNS, the device) is stale
        self._asking = neighbours.Asking()

    def start_lan(self, name: str) -> None:
        """mDNS as `name`. Not awaited: announcing probes the name for about a second, and
        the punch to the other peers must not wait for it (it did: new pairs took 1.3 s)."""
        self.name = name
        self._lan = asyncio.create_task(self._announce(), name="mdns")

    def ask_for_neighbours(self, now: float) -> None:
        """Ask mDNS again, when due, for the peers that should be on our LAN (neighbours.py)."""
        lan = self._lan
        if lan is None or not lan.done() or lan.cancelled() or lan.exception() is not None:
            return  # mDNS is starting: its browser's own first questions are on their way
        wanted, discovery = neighbours.unsighted(self.mesh), lan.result()
        discovery.expect(self.mesh.peers[key].name for key in wanted)
        if self._asking.due(wanted, now):
            discovery.ask_again()

    async def stop(self) -> None:
        """Stop mDNS, started or still starting, within a bounded wait."""
        start, self._lan = self._lan, None
        if start is None:
            return
        await end([start])
        if start.done() and not start.cancelled() and not start.exception():
            await bounded(start.result().stop())

    async def follow(self) -> None:
        """netlink's news: when this host's addresses or gateway change, roam."""
        async with contextlib.aclosing(netwatch.network_changes()) as changes:
            try:
                await anext(changes)  # subscribed: the view read now is the one changes move
            except (OSError, NetlinkError) as error:
                # A sandbox without rtnetlink's groups: the agent runs all the same, and a
                # move heals as a NAT reboot does, when a path stalls.
                logger.warning("not following this host's network changes: %s", error)
                return
            self.uplinks = await asyncio.to_thread(self.links.uplinks, self.ifname)
            async for _ in changes:
                now = await asyncio.to_thread(self.links.uplinks, self.ifname)
                if now != self.uplinks:
                    await self._roam(now)
                self.uplinks = now

    async def _roam(self, uplinks: Uplinks) -> None:
        if not uplinks.interfaces:
            logger.warning("this host has no network now: waiting for one")
            return
        logger.info("this host's network changed (%s): setting every endpoint again", uplinks)
        self.moves += 1
        self.mesh.roamed()  # forgets every sighting: mDNS on the new LAN sets our subnets anew
        self._wake()
        self.moved.set()
        self.moved.clear()
        await self.stop()
        self._asking = neighbours.Asking()  # the new LAN's browser starts with its own questions
        self.start_lan(self.name)

    async def _announce(self) -> LanDiscovery:
        """mDNS on the LAN: peers behind the same NAT reach each other without hairpinning."""
        interfaces = await asyncio.to_thread(self.links.lan_interfaces, self.ifname)
        interfaces = self._outside_mesh(interfaces)
        self.mesh.set_own_lan(interfaces)
        addresses = [str(interface.ip) for interface in interfaces]
        # Told to the rendezvous: a peer behind our public address tries only these.
        self.lan_report.want(addresses, self.listen_port)
        network = self.moves

        def on_sightings(sightings: Sightings) -> None:
            if network == self.moves:  # not what the old LAN's mDNS still hears
                self.mesh.merge(sighted("lan", sightings))
                self._wake()

        lan = LanDiscovery(self.mesh.own_key, self.name, self.listen_port, addresses, on_sightings)
        try:
            await lan.start()
        except OSError as error:
            logger.warning("mDNS discovery off: %s", error)
        return lan

    def _outside_mesh(
        self, interfaces: list[ipaddress.IPv4Interface]
    ) -> list[ipaddress.IPv4Interface]:
        """This host's LAN addresses, less any in the mesh's own network (a second mesh link)."""
        return [interface for interface in interfaces if interface.ip not in self.mesh_network]
