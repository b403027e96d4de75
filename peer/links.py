"""The few rtnetlink operations the agent needs (links, addresses, the main routing table),
through pyroute2's IPRoute, for both WireGuard backends.

Every method here is blocking netlink: the agent calls them with asyncio.to_thread, never on
the event loop's thread (tests/conftest.py's no_blocking_calls fixture holds it to that).
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from meshpeer.common.endpoints import IPAddress, IPNetwork

from .errors import BackendError
from .routes import RouteTable

# An interface made by us says so in its alias: `down` and restarts touch nothing else.
OWNER_ALIAS = "meshpeer"
# The protocol (rtm_protocol) of every route the agent installs: how it tells its own routes from
# everyone else's, and the only routes it ever deletes. 109 is free: it is in neither the kernel's
# RTPROT_* list (linux/rtnetlink.h), iproute2's rt_protos nor FRR's (186-196), and the kernel
# never reads it. `echo "109 meshpeer" > /etc/iproute2/rt_protos.d/meshpeer.conf` names it for `ip`.
RTPROT_MESHPEER = 109
RT_TABLE_MAIN = 254
# A default route has no RTA_DST; the other families (multicast, MPLS) have no prefixes for us.
_ZERO = {socket.AF_INET: ipaddress.IPv4Address(0), socket.AF_INET6: ipaddress.IPv6Address(0)}


@dataclass(frozen=True, slots=True)
class Uplinks:
    """This host's IPv4 addresses outside the mesh, and its default gateways."""

    interfaces: tuple[ipaddress.IPv4Interface, ...]
    gateways: tuple[IPAddress, ...]

    def __str__(self) -> str:
        addresses = ", ".join(str(interface) for interface in self.interfaces) or "no address"
        gateways = ", ".join(str(gateway) for gateway in self.gateways) or "none"
        return f"{addresses}; default gateway {gateways}"


class Links:
    """The few rtnetlink operations the agent needs, through pyroute2's IPRoute."""

    def __init__(self, iproute_factory: Callable[[], Any] | None = None) -> None:
        if iproute_factory is None:
            from pyroute2 import IPRoute

            iproute_factory = IPRoute
        self._factory = iproute_factory

    def index(self, ifname: str) -> int | None:
        with self._factory() as ip:
            found = ip.link_lookup(ifname=ifname)
        return int(found[0]) if found else None

    def is_ours(self, ifname: str) -> bool:
        with self._factory() as ip:
            found = ip.link_lookup(ifname=ifname)
            if not found:
                return False
            [link] = ip.get_links(found[0])
        return bool(link.get_attr("IFLA_IFALIAS") == OWNER_ALIAS)

    def lan_interfaces(self, skip_ifname: str) -> list[ipaddress.IPv4Interface]:
        """This host's IPv4 addresses on its other links, with their prefixes (for mDNS, and
        to tell which sightings lie on a subnet we are on): not loopback, not ours."""
        with self._factory() as ip:
            skip = set(ip.link_lookup(ifname=skip_ifname))
            return [i for index, i in self._ipv4_addresses(ip) if index not in skip]

    @staticmethod
    def _ipv4_addresses(ip: Any) -> list[tuple[int, ipaddress.IPv4Interface]]:
        """Every IPv4 address but loopback, with its prefix and its link's index."""
        found = []
        for item in ip.get_addr(family=socket.AF_INET):
            address = item.get_attr("IFA_ADDRESS")
            interface = ipaddress.IPv4Interface(f"{address}/{item['prefixlen']}")
            if not interface.ip.is_loopback:
                found.append((int(item["index"]), interface))
        return found

    def uplinks(self, skip_ifname: str) -> Uplinks:
        """Where this host is on the network now: its default gateways, and its addresses on
        the links they go out of (all of them on a host without a default route). Two equal
        views are one network; a new one means the host moved (netwatch.py). A link that
        carries no default route (docker0, a VPN's tun0, a bridge for VMs) is not a move."""
        with self._factory() as ip:
            skip = set(ip.link_lookup(ifname=skip_ifname))
            routes = ip.get_routes(family=socket.AF_INET, table=RT_TABLE_MAIN)
            defaults = [route for route in routes if route["dst_len"] == 0]
            uplinks = {route.get_attr("RTA_OIF") for route in defaults} - skip
            interfaces = [
                interface
                for index, interface in self._ipv4_addresses(ip)
                if index not in skip and (not uplinks or index in uplinks)
            ]
        gateways = [gateway for route in defaults for gateway in _gateways(route)]
        return Uplinks(tuple(sorted(interfaces)), tuple(sorted(gateways, key=str)))

    def create_wireguard(self, ifname: str) -> None:
        with self._factory() as ip:
            ip.link("add", ifname=ifname, kind="wireguard")

    def claim(self, ifname: str, address: str, mtu: int) -> None:
        """Mark the link as ours, give it its mesh address and MTU, and bring it up."""
        interface = ipaddress.ip_interface(address)
        with self._factory() as ip:
            [index] = ip.link_lookup(ifname=ifname)
            ip.link("set", index=index, ifalias=OWNER_ALIAS, mtu=mtu)
            existing = {
                (attr.get_attr("IFA_ADDRESS"), attr["prefixlen"])
                for attr in ip.get_addr(index=index)
            }
            if (str(interface.ip), interface.network.prefixlen) not in existing:
                ip.addr(
                    "add",
                    index=index,
                    address=str(interface.ip),
                    prefixlen=interface.network.prefixlen,
                )
            ip.link("set", index=index, state="up")

    def route_table(self, ifname: str) -> RouteTable:
        foreign: list[IPNetwork] = []
        owned: set[str] = set()
        gateways: list[IPAddress] = []
        with self._factory() as ip:
            index = _index_of(ip, ifname)
            for message in ip.get_routes(table=RT_TABLE_MAIN):
                if message["family"] not in _ZERO:
                    continue
                prefix = _route_prefix(message)
                if message["proto"] == RTPROT_MESHPEER and message.get_attr("RTA_OIF") == index:
                    owned.add(str(prefix))
                    continue
                foreign.append(prefix)
                if prefix.prefixlen == 0:
                    gateways += _gateways(message)
            addresses = [ipaddress.ip_address(a.get_attr("IFA_ADDRESS")) for a in ip.get_addr()]
        return RouteTable(tuple(foreign), frozenset(owned), tuple(gateways), tuple(addresses))

    def set_routes(self, ifname: str, wanted: set[str], owned: frozenset[str]) -> dict[str, str]:
        """Add the routes in `wanted` via the link, marked as ours, and delete those of ours
        (`owned`, from `route_table`) no longer wanted. Only ever `add`, never `replace`: a
        route someone else holds for the prefix stays, and the prefix is answered as not
        installed, with why. Deleting names our protocol and link: the kernel then touches
        only the route we made, even if another with the same prefix has appeared."""
        failed: dict[str, str] = {}
        with self._factory() as ip:
            index = _index_of(ip, ifname)
            ours = {"oif": index, "proto": RTPROT_MESHPEER, "table": RT_TABLE_MAIN}
            for cidr in sorted(owned - wanted):
                with contextlib.suppress(NetlinkError):  # already gone (ESRCH)
                    ip.route("del", dst=cidr, **ours)
            for cidr in sorted(wanted - owned):
                try:
                    ip.route("add", dst=cidr, **ours)
                except NetlinkError as error:
                    failed[cidr] = _route_error(error)
        return failed

    def delete(self, ifname: str) -> None:
        with self._factory() as ip:
            found = ip.link_lookup(ifname=ifname)
            if found:
                ip.link("del", index=found[0])


def _index_of(ip: Any, ifname: str) -> int:
    found = ip.link_lookup(ifname=ifname)
    if not found:
        raise BackendError(f"interface {ifname} is gone")
    return int(found[0])


def _route_prefix(message: Any) -> IPNetwork:
    destination = message.get_attr("RTA_DST") or _ZERO[message["family"]]
    return ipaddress.ip_network(f"{destination}/{message['dst_len']}", strict=False)


def _gateways(message: Any) -> list[IPAddress]:
    """The next hops of a route: RTA_GATEWAY, or one per hop of a multipath route."""
    found = [message.get_attr("RTA_GATEWAY")]
    for hop in message.get_attr("RTA_MULTIPATH") or []:
        found.append(hop.get_attr("RTA_GATEWAY"))
    return [ipaddress.ip_address(gateway) for gateway in found if gateway]


def _route_error(error: NetlinkError) -> str:
    if error.code == errno.EEXIST:
        return "this host got a route to it meanwhile (EEXIST): left as it is"
    return f"the kernel refused it ({os.strerror(error.code)})"
