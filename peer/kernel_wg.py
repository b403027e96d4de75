"""The kernel WireGuard backend: the device through pyroute2's generic netlink (WireGuard),
the link through rtnetlink (links.py). pyroute2 is blocking: every call runs in a thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from meshpeer.common.keys import encode_key, parse_key

from .errors import MissingTool
from .links import Links
from .uapi import DeviceStatus, PeerConfig, PeerStatus, checked
from .wireguard import kernel_has_wireguard, refused_as_backend_error


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

    async def alive(self) -> bool:
        return await asyncio.to_thread(self.links.index, self.ifname) is not None

    async def destroy(self) -> None:
        await asyncio.to_thread(self.links.delete, self.ifname)


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
