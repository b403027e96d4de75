"""WireGuard backends behind one interface: the kernel (pyroute2 generic netlink) and
userspace (wireguard-go, driven through its UAPI socket). Links, addresses and routes go
through rtnetlink for both (`Links`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import shutil
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pyroute2.netlink.exceptions import NetlinkError

from meshpeer.common.endpoints import IPAddress, IPNetwork
from meshpeer.common.errors import Failure, UsageError
from meshpeer.common.keys import encode_key, parse_key

from .uapi import (
    DeviceStatus,
    PeerConfig,
    PeerStatus,
    UapiError,
    check_errno,
    checked,
    get_request,
    parse_get,
    set_device,
    set_peers,
)

logger = logging.getLogger("meshpeer.peer.wireguard")

UAPI_DIR = Path("/run/wireguard")
SOCKET_WAIT_S = 5.0
USERSPACE_ENV = {"WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1"}
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


class BackendError(Failure):
    """The interface could not be made or driven; the message says what to fix."""


class MissingTool(UsageError, BackendError):
    """Something to install (wireguard-go): a user-fixable problem."""


class Backend(Protocol):
    name: str

    def check(self) -> None:
        """Raise if this backend cannot work here (a tool missing), before anything is done."""

    def alive(self) -> bool:
        """False once the device is gone (wireguard-go died): the agent then makes it again."""

    async def create(self, ifname: str, private_key: bytes, listen_port: int) -> None: ...

    async def apply(self, peers: list[PeerConfig], remove: list[bytes]) -> None: ...

    async def status(self) -> DeviceStatus: ...

    async def destroy(self) -> None: ...


# -- rtnetlink: links, addresses, routes ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RouteTable:
    """The main routing table and this host's addresses, as the route decision needs them."""

    foreign: tuple[IPNetwork, ...]  # every route the agent did not install
    owned: frozenset[str]  # ours: our protocol, on our interface
    default_gateways: tuple[IPAddress, ...]
    addresses: tuple[IPAddress, ...]  # this host's, on every link


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
            found = []
            for item in ip.get_addr(family=2):  # AF_INET
                address = item.get_attr("IFA_ADDRESS")
                interface = ipaddress.IPv4Interface(f"{address}/{item['prefixlen']}")
                if item["index"] not in skip and not interface.ip.is_loopback:
                    found.append(interface)
        return found

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


# -- userspace: wireguard-go and UAPI ---------------------------------------------------------


class UserspaceBackend:
    name = "userspace"

    def __init__(self, uapi_dir: Path = UAPI_DIR, binary: str = "wireguard-go") -> None:
        self.uapi_dir = uapi_dir
        self.binary = binary
        self.ifname = ""
        self.process: asyncio.subprocess.Process | None = None

    @property
    def socket_path(self) -> Path:
        return self.uapi_dir / f"{self.ifname}.sock"

    def check(self) -> None:
        if shutil.which(self.binary) is None:
            raise MissingTool(
                "wireguard-go is not installed: `apt-get install wireguard-go`, "
                "or use --backend kernel on a kernel with WireGuard"
            )

    async def create(self, ifname: str, private_key: bytes, listen_port: int) -> None:
        self.ifname = ifname
        self.check()
        # A socket left by a wireguard-go that died would look ready before the new one is.
        # (The interface is known not to exist here, so no live wireguard-go owns it.)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        process = await asyncio.create_subprocess_exec(
            self.binary,
            "--foreground",
            ifname,
            env={**os.environ, **USERSPACE_ENV},
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        self.process = process
        await self._wait_for_socket(process)
        with refused_as_backend_error():
            check_errno(await self._exchange(set_device(private_key, listen_port)))

    async def _wait_for_socket(self, process: asyncio.subprocess.Process) -> None:
        """Until wireguard-go accepts on its socket: the file can be there a moment before it
        listens (a start once failed with ECONNREFUSED), so connect, not only look."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SOCKET_WAIT_S
        while not await self._accepts():
            if process.returncode is not None or loop.time() > deadline:
                await _fail_start(process)
            await asyncio.sleep(0.02)

    async def _accepts(self) -> bool:
        try:
            _, writer = await asyncio.open_unix_connection(str(self.socket_path))
        except OSError:
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def apply(self, peers: list[PeerConfig], remove: list[bytes]) -> None:
        if peers or remove:
            with refused_as_backend_error():
                check_errno(await self._exchange(set_peers(peers, remove)))

    async def status(self) -> DeviceStatus:
        with refused_as_backend_error():
            return parse_get(await self._exchange(get_request()))

    async def _exchange(self, request: bytes) -> bytes:
        try:
            reader, writer = await asyncio.open_unix_connection(str(self.socket_path))
        except OSError as error:
            raise BackendError(
                f"cannot reach wireguard-go at {self.socket_path}: {error}"
            ) from None
        try:
            writer.write(request)
            await writer.drain()
            return await reader.readuntil(b"\n\n")
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as error:
            raise UapiError(f"wireguard-go closed the UAPI socket: {error!r}") from None
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def destroy(self) -> None:
        """Stopping wireguard-go removes its TUN device and socket."""
        process, self.process = self.process, None
        if process is None or process.returncode is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 1)  # a stop must end within 2 s
        except TimeoutError:
            process.kill()
            await process.wait()


async def _fail_start(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.terminate()
    _, errors = await process.communicate()
    detail = errors.decode(errors="replace").strip().splitlines()
    raise BackendError(f"wireguard-go did not start: {detail[-1] if detail else 'no output'}")


# -- kernel: pyroute2's generic netlink -------------------------------------------------------


class KernelBackend:
    name = "kernel"

    def __init__(
        self, links: Links | None = None, wireguard_factory: Callable[[], Any] | None = None
    ) -> None:
        if wireguard_factory is None:
            from pyroute2 import WireGuard

            wireguard_factory = WireGuard
        self.links = links or Links()
        self._factory = wireguard_factory
        self.ifname = ""

    def check(self) -> None:
        if not kernel_has_wireguard():
            raise MissingTool(
                "this kernel has no WireGuard module: `modprobe wireguard`, "
                "or use --backend userspace (wireguard-go)"
            )

    async def create(self, ifname: str, private_key: bytes, listen_port: int) -> None:
        self.ifname = ifname
        await asyncio.to_thread(self._create, private_key, listen_port)

    def _create(self, private_key: bytes, listen_port: int) -> None:
        if self.links.index(self.ifname) is None:
            self.links.create_wireguard(self.ifname)
        with self._factory() as wg:
            wg.set(self.ifname, private_key=encode_key(private_key), listen_port=listen_port)

    async def apply(self, peers: list[PeerConfig], remove: list[bytes]) -> None:
        await asyncio.to_thread(self._apply, peers, remove)

    def _apply(self, peers: list[PeerConfig], remove: list[bytes]) -> None:
        with refused_as_backend_error():
            settings = [netlink_peer(peer) for peer in peers]
        with self._factory() as wg:
            for key in remove:
                wg.set(self.ifname, peer={"public_key": encode_key(key), "remove": True})
            for peer, setting in zip(peers, settings, strict=True):
                if peer.kick and peer.keepalive_s:
                    kicked = {"public_key": setting["public_key"], "persistent_keepalive": 0}
                    wg.set(self.ifname, peer=kicked)
                wg.set(self.ifname, peer=setting)

    async def status(self) -> DeviceStatus:
        return await asyncio.to_thread(self._status)

    def _status(self) -> DeviceStatus:
        with self._factory() as wg:
            return device_from_netlink(wg.info(self.ifname))

    def alive(self) -> bool:
        return self.links.index(self.ifname) is not None

    async def destroy(self) -> None:
        await asyncio.to_thread(self.links.delete, self.ifname)


@contextlib.contextmanager
def refused_as_backend_error() -> Iterator[None]:
    """UAPI's error (a value refused, a reply not understood, a device's errno) as the backends'
    own: the reconcile loop outlives a BackendError and retries; anything else would end it."""
    try:
        yield
    except UapiError as error:
        raise BackendError(str(error)) from None


def netlink_peer(peer: PeerConfig) -> dict[str, Any]:
    """A peer as pyroute2's WireGuard.set takes it (base64 keys, split endpoint); UapiError
    for a value the UAPI encoder would refuse too (pyroute2 would resolve a host name)."""
    peer = checked(peer)
    settings: dict[str, Any] = {
        "public_key": encode_key(peer.public_key),
        "replace_allowed_ips": True,
        "allowed_ips": list(peer.allowed_ips),
        "persistent_keepalive": peer.keepalive_s,
    }
    if peer.endpoint is not None:
        settings["endpoint_addr"], settings["endpoint_port"] = peer.endpoint
    return settings


def device_from_netlink(messages: Any) -> DeviceStatus:
    """Our view of `WireGuard.info()`: the device and its peers, over every message of the dump."""
    device = DeviceStatus()
    for message in messages:
        port = message.get_attr("WGDEVICE_A_LISTEN_PORT")
        if port:
            device.listen_port = int(port)
        for peer in message.get_attr("WGDEVICE_A_PEERS") or []:
            status = _peer_from_netlink(peer)
            device.peers[status.public_key] = status
    return device


def _peer_from_netlink(peer: Any) -> PeerStatus:
    # pyroute2 hands the key over already base64-encoded (its parse_peer_key does that).
    text = peer.get_attr("WGPEER_A_PUBLIC_KEY")
    key = parse_key(text.decode("ascii") if isinstance(text, bytes) else text)
    status = PeerStatus(key)
    endpoint = peer.get_attr("WGPEER_A_ENDPOINT")
    if endpoint and endpoint.get("port"):
        status.endpoint = (str(endpoint["addr"]), int(endpoint["port"]))
    handshake = peer.get_attr("WGPEER_A_LAST_HANDSHAKE_TIME")
    if handshake and handshake["tv_sec"]:
        status.latest_handshake = handshake["tv_sec"] + handshake["tv_nsec"] / 1e9
    status.keepalive_s = int(peer.get_attr("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL") or 0)
    status.rx_bytes = int(peer.get_attr("WGPEER_A_RX_BYTES") or 0)
    status.tx_bytes = int(peer.get_attr("WGPEER_A_TX_BYTES") or 0)
    for allowed in peer.get_attr("WGPEER_A_ALLOWEDIPS") or []:
        if "addr" in allowed:
            status.allowed_ips.append(str(allowed["addr"]))
    return status


def kernel_has_wireguard() -> bool:
    return Path("/sys/module/wireguard").exists()
