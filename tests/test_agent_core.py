"""The agent's cores without a network: UAPI, the mesh planner, the kernel backend's netlink."""

from __future__ import annotations

import ipaddress
import json
import os
import stat
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyroute2.netlink.generic.wireguard import AsyncWireGuard, wgmsg

from meshpeer.peer import uapi
from meshpeer.peer.api_decode import remote_peer
from meshpeer.peer.discovery import RemotePeer, api_delta, api_list, sighted
from meshpeer.peer.kernel_wg import KernelBackend, device_from_netlink, netlink_peer
from meshpeer.peer.mesh import Mesh
from meshpeer.peer.plan import Surroundings
from meshpeer.peer.routes import RouteTable
from meshpeer.peer.state import StateDir
from meshpeer.peer.status import Identity, RendezvousState
from meshpeer.peer.timers import PATH_FRESH_S, PEER_KEEPALIVE_S, REPUNCH_S
from meshpeer.peer.uapi import DeviceStatus, PeerConfig, PeerStatus, UapiError
from tests.blocking import forbid_on_loop_thread

KEY_A, KEY_B, OWN = bytes([1]) * 32, bytes([2]) * 32, bytes([9]) * 32

GET_REPLY = (
    "private_key=" + "ab" * 32 + "\nlisten_port=51820\n"
    "public_key=" + KEY_A.hex() + "\nendpoint=203.0.113.7:40000\n"
    "last_handshake_time_sec=1700000000\nlast_handshake_time_nsec=500000000\n"
    "tx_bytes=10\nrx_bytes=20\npersistent_keepalive_interval=25\n"
    "allowed_ip=10.77.0.2/32\nallowed_ip=192.168.1.0/24\n"
    "public_key=" + KEY_B.hex() + "\nendpoint=[2001:db8::1]:51820\n"
    "last_handshake_time_sec=0\nlast_handshake_time_nsec=0\n"
    "errno=0\n\n"
).encode()


def test_uapi_reads_a_device_and_writes_peers() -> None:
    device = uapi.parse_get(GET_REPLY)
    assert device.listen_port == 51820 and device.has_private_key
    a, b = device.peers[KEY_A], device.peers[KEY_B]
    assert a.endpoint == ("203.0.113.7", 40000) and a.latest_handshake == 1700000000.5
    assert a.allowed_ips == ["10.77.0.2/32", "192.168.1.0/24"] and a.keepalive_s == 25
    assert b.endpoint == ("2001:db8::1", 51820) and b.latest_handshake is None
    request = uapi.set_peers(
        [PeerConfig(KEY_A, ("10.77.0.2/32",), ("203.0.113.7", 1), 25, kick=True)], [KEY_B]
    ).decode()
    assert request.startswith("set=1\n") and request.endswith("\n\n")
    assert f"public_key={KEY_B.hex()}\nremove=true\n" in request
    assert "persistent_keepalive_interval=0\npersistent_keepalive_interval=25\n" in request
    assert "replace_allowed_ips=true\nallowed_ip=10.77.0.2/32\n" in request
    uapi.check_errno(b"errno=0\n\n")
    with pytest.raises(UapiError, match="errno=-22"):
        uapi.check_errno(b"errno=-22\n\n")


@settings(max_examples=300, deadline=None)
@given(
    data=st.one_of(
        st.binary(max_size=400),
        st.lists(st.integers(0, len(GET_REPLY) - 1), max_size=5).map(
            lambda cuts: GET_REPLY[: min(cuts)] if cuts else GET_REPLY
        ),
        st.tuples(st.integers(0, len(GET_REPLY) - 1), st.binary(min_size=1, max_size=3)).map(
            lambda edit: GET_REPLY[: edit[0]] + edit[1] + GET_REPLY[edit[0] + 1 :]
        ),
    )
)
def test_hostile_uapi_replies_raise_only_uapi_error(data: bytes) -> None:
    try:
        uapi.parse_get(data)
    except UapiError:
        pass


def remote(key: bytes, endpoint: tuple[str, int] | None = ("203.0.113.7", 40000)) -> RemotePeer:
    return RemotePeer(key, "a", "10.77.0.2", ("192.168.1.0/24",), endpoint)


def device_with(key: bytes, handshake: float | None) -> DeviceStatus:
    return DeviceStatus(peers={key: PeerStatus(key, latest_handshake=handshake)})


def test_the_planner_adds_punches_keeps_up_paths_and_removes() -> None:
    mesh = Mesh(OWN, accept_routes=True)
    mesh.merge(api_list([remote(KEY_A, endpoint=None), remote(OWN)]))
    plan = mesh.plan(DeviceStatus(), now=100.0)
    [added] = plan.set_peers
    assert added.allowed_ips == ("10.77.0.2/32",)  # its routes only once accepted (routes.py)
    assert added.keepalive_s == 0 and added.endpoint is None and not added.kick
    assert mesh.plan(device_with(KEY_A, None), 101.0).set_peers == []
    host = Surroundings(
        Identity("me", "10.77.0.9", "wg0", "userspace", None),
        RendezvousState("https://203.0.113.2"),
        ipaddress.ip_network("10.77.0.0/16"),
        route_table=RouteTable((), frozenset(), (), ()),
    )
    [accepted] = mesh.plan(device_with(KEY_A, None), 101.0, host).set_peers
    assert accepted.allowed_ips == ("10.77.0.2/32", "192.168.1.0/24")

    mesh.merge(api_delta([remote(KEY_A)]))  # the rendezvous saw its endpoint
    [punch] = mesh.plan(device_with(KEY_A, None), 102.0).set_peers
    assert punch.endpoint == ("203.0.113.7", 40000) and punch.kick
    assert punch.keepalive_s == PEER_KEEPALIVE_S
    assert mesh.plan(device_with(KEY_A, None), 103.0).set_peers == []  # not every second
    [again] = mesh.plan(device_with(KEY_A, None), 102.0 + REPUNCH_S).set_peers
    assert again.kick

    up = mesh.plan(device_with(KEY_A, 112.5), 113.0)
    assert up.set_peers == [] and mesh.path(KEY_A) == "direct"
    assert any("none -> direct" in event for event in up.events)
    mesh.merge(api_delta([remote(KEY_A, ("203.0.113.7", 1))]))  # moved while up: WireGuard roams
    assert mesh.plan(device_with(KEY_A, 112.5), 114.0).set_peers == []
    down = mesh.plan(device_with(KEY_A, 112.5), 112.5 + PATH_FRESH_S + 1)
    assert mesh.path(KEY_A) == "none" and down.set_peers[0].endpoint == ("203.0.113.7", 1)

    mesh.merge(api_delta([], [KEY_A]))
    gone = mesh.plan(device_with(KEY_A, None), 400.0)
    assert gone.remove == [KEY_A] and any("removed" in event for event in gone.events)


def test_a_path_is_down_from_its_listing_until_a_handshake_and_once_that_is_stale() -> None:
    """What the agent reads DNS-SD for (Agent._poll_dns_sd): a listed peer with no live path."""
    mesh = Mesh(OWN)
    assert not mesh.any_path_down()  # nobody to reach
    mesh.merge(api_list([remote(KEY_A)]))
    assert mesh.any_path_down()  # listed, before any round
    mesh.plan(device_with(KEY_A, None), 100.0)
    assert mesh.any_path_down()
    mesh.plan(device_with(KEY_A, 100.5), 101.0)
    assert not mesh.any_path_down()
    mesh.merge(api_delta([remote(KEY_B)]))
    assert mesh.any_path_down()  # a newcomer, while KEY_A's path stays up
    mesh.merge(api_delta([], [KEY_B]))
    assert not mesh.any_path_down()
    mesh.plan(device_with(KEY_A, 100.5), 100.5 + PATH_FRESH_S + 1)
    assert mesh.any_path_down()


def test_peers_from_the_api_are_checked() -> None:
    good = {
        "public_key": "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=",
        "name": "a",
        "address": "10.77.0.2",
        "endpoint": "203.0.113.7:5",
        "routes": ["10.1.0.0/16"],
    }
    peer = remote_peer(good)
    assert peer is not None and peer.public_key == KEY_A and peer.endpoint == ("203.0.113.7", 5)
    for broken in [
        {},
        {**good, "public_key": "x"},
        {**good, "endpoint": "host:0"},
        {**good, "address": "nowhere"},
        {**good, "routes": ["1.2.3.4/99"]},
    ]:
        assert remote_peer(broken) is None


# pyroute2's own peer encoder, without a socket (its checks use no socket state).
VALIDATOR = AsyncWireGuard.__new__(AsyncWireGuard)


class FakeNetlinkWireGuard:
    """Stands in for pyroute2.WireGuard on a kernel without the module: records set() calls
    and answers info() with messages built by pyroute2's own wgmsg class."""

    def __init__(self, calls: list[dict[str, Any]], info: list[Any]) -> None:
        self.calls, self.info_messages = calls, info

    def __enter__(self) -> FakeNetlinkWireGuard:
        forbid_on_loop_thread("pyroute2.WireGuard")  # as the real one is (conftest.py)
        return self

    def __exit__(self, *_: object) -> None:
        return None

    def set(self, interface: str, **settings: Any) -> None:
        message = wgmsg()  # pyroute2 must be able to encode what we pass
        message["attrs"].append(["WGDEVICE_A_IFNAME", interface])
        if settings.get("peer") is not None:
            VALIDATOR._wg_set_peer(message, settings["peer"])
        message.encode()
        self.calls.append({"interface": interface, **settings})

    def info(self, interface: str) -> list[Any]:
        return self.info_messages


def kernel_info_message() -> Any:
    """A device dump as the kernel sends it, encoded and decoded by pyroute2."""
    message = wgmsg()
    message["cmd"] = 0
    message["version"] = 1
    peer = {
        "attrs": [
            ["WGPEER_A_PUBLIC_KEY", {"value": "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="}],
            ["WGPEER_A_ENDPOINT", {"addr": "203.0.113.7", "port": 40000}],
            ["WGPEER_A_LAST_HANDSHAKE_TIME", {"tv_sec": 1700000000, "tv_nsec": 0}],
            ["WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL", 25],
            ["WGPEER_A_RX_BYTES", 5],
            ["WGPEER_A_TX_BYTES", 6],
        ]
    }
    message["attrs"] = [
        ["WGDEVICE_A_IFNAME", "wg0"],
        ["WGDEVICE_A_LISTEN_PORT", 51820],
        ["WGDEVICE_A_PEERS", [peer]],
    ]
    message.encode()
    decoded = wgmsg(message.data)
    decoded.decode()
    return decoded


def test_the_kernel_backend_speaks_pyroute2s_netlink() -> None:
    import asyncio

    calls: list[dict[str, Any]] = []

    class NoLinks:
        def index(self, ifname: str) -> int:
            return 7

    backend = KernelBackend(NoLinks(), lambda: FakeNetlinkWireGuard(calls, [kernel_info_message()]))  # type: ignore[arg-type]

    async def scenario() -> DeviceStatus:
        await backend.create("wg0", bytes(range(32)), 51820)
        await backend.apply(
            [PeerConfig(KEY_A, ("10.77.0.2/32",), ("203.0.113.7", 40000), 25, kick=True)],
            [KEY_B],
        )
        return await backend.status()

    device = asyncio.run(scenario())
    assert calls[0]["listen_port"] == 51820 and calls[0]["private_key"]
    assert calls[1]["peer"]["remove"] is True
    assert calls[2]["peer"] == {
        "public_key": netlink_peer(PeerConfig(KEY_A, ()))["public_key"],
        "persistent_keepalive": 0,
    }
    assert calls[3]["peer"]["endpoint_addr"] == "203.0.113.7"
    assert calls[3]["peer"]["allowed_ips"] == ["10.77.0.2/32"]
    status = device.peers[KEY_A]
    assert status.endpoint == ("203.0.113.7", 40000) and status.latest_handshake == 1700000000
    assert status.keepalive_s == 25 and device.listen_port == 51820
    assert device_from_netlink([]).peers == {}


MESHPEER = [sys.executable, "-m", "meshpeer.peer.cli"]


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["run", "--bogus"], "unrecognized arguments"),
        (["run", "--token", "nonsense"], "join token starts with mp2_"),
        (["run", "--listen-port", "70000"], "--listen-port"),
        (["run", "--token-file", "/nonexistent/token"], "cannot read --token-file"),
        (["run", "--token", "mp1_eyJhcGkiOiAiaHR0cDovL3gifQ"], "before the API used TLS"),
        (["run", "--dns-sd-interval", "0"], "--dns-sd-interval"),
        (["run", "--advertise-routes", "10.0.0.0/99"], "not a CIDR"),
        (["run", "--name", "Bad Name"], "DNS label"),
        (["run"], "holds no membership yet"),
        (["status"], "not running"),
    ],
)
def test_agent_mistakes_cost_one_line_and_exit_2(
    tmp_path: Path, argv: list[str], words: str
) -> None:
    result = subprocess.run(
        [*MESHPEER, *argv, "--state-dir", str(tmp_path / "state")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ},
    )
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert "error:" in line and words in line, line


def test_lan_candidates_come_first_and_name_the_path() -> None:
    from meshpeer.peer.lan import parse_sighting

    pub = b"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="
    assert parse_sighting({b"pub": pub}, ["192.168.1.5", "127.0.0.1"], 51820) == (
        KEY_A,
        [("192.168.1.5", 51820)],
    )
    bad_answers: list[tuple[dict[bytes, bytes | None], list[str], int | None]] = [
        ({}, ["192.168.1.5"], 1),
        ({b"pub": b"x"}, ["192.168.1.5"], 1),
        ({b"pub": pub}, ["nope"], 1),
        ({b"pub": pub}, ["192.168.1.5"], None),
    ]
    for bad in bad_answers:
        assert parse_sighting(*bad) is None
    mesh = Mesh(OWN)
    reported = replace(remote(KEY_A), lan_endpoints=(("192.168.1.5", 51820),))
    mesh.merge(api_list([reported]))
    mesh.set_own_lan([ipaddress.IPv4Interface("192.168.1.2/24")])
    mesh.merge(sighted("lan", {KEY_A: [("192.168.1.5", 51820)]}))
    [first] = mesh.plan(DeviceStatus(), 100.0).set_peers
    assert first.endpoint == ("192.168.1.5", 51820)
    [second] = mesh.plan(device_with(KEY_A, None), 100.0 + REPUNCH_S).set_peers
    assert second.endpoint == ("203.0.113.7", 40000)  # the LAN did not answer: the mapping
    device = DeviceStatus(
        peers={KEY_A: PeerStatus(KEY_A, ("192.168.1.5", 51820), latest_handshake=111.0)}
    )
    mesh.plan(device, 112.0)
    assert mesh.path(KEY_A) == "lan"


def test_a_peer_whose_mapping_moved_is_punched_at_once_even_while_its_path_looks_up() -> None:
    mesh = Mesh(OWN)
    old, new, roamed = ("203.0.113.7", 40000), ("203.0.113.7", 41000), ("198.51.100.9", 5)
    mesh.merge(api_list([remote(KEY_A, old)]))
    mesh.plan(DeviceStatus(), now=100.0)
    using_old = DeviceStatus(peers={KEY_A: PeerStatus(KEY_A, old, latest_handshake=101.0)})
    assert mesh.plan(using_old, 102.0).set_peers == [] and mesh.path(KEY_A) == "direct"

    mesh.merge(api_delta([remote(KEY_A, new)]))  # its NAT rebooted: the rendezvous saw a new port
    [punch] = mesh.plan(using_old, 103.0).set_peers
    assert punch.endpoint == new and punch.kick

    mesh.merge(api_delta([remote(KEY_A, old)]))
    mesh.plan(DeviceStatus(), 104.0)
    roaming = DeviceStatus(peers={KEY_A: PeerStatus(KEY_A, roamed, latest_handshake=104.0)})
    mesh.merge(api_delta([remote(KEY_A, new)]))
    assert mesh.plan(roaming, 105.0).set_peers == []  # WireGuard roamed there: authenticated


def test_down_never_signals_a_process_that_only_inherited_the_agents_pid(tmp_path: Path) -> None:
    """After a SIGKILLed run, its pid may belong to anything: `down` must leave that alone."""
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        state = tmp_path / "state"
        state.mkdir()
        status = {"pid": bystander.pid, "pid_start": 1, "interface": "mpt-none", "peers": []}
        (state / "status.json").write_text(json.dumps(status))
        result = subprocess.run(
            [*MESHPEER, "down", "--state-dir", str(state)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 1, result.stderr  # the agent had died: said, not hidden
        assert "had stopped without cleaning up" in result.stderr
        assert bystander.poll() is None  # still running: never signalled
    finally:
        bystander.kill()
        bystander.wait()


def test_state_files_are_written_through_a_name_of_their_own_and_never_a_link(
    tmp_path: Path,
) -> None:
    state = StateDir(tmp_path / "state")
    (tmp_path / "state").mkdir(mode=0o755)
    state.prepare()
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700  # tightened
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    (tmp_path / "state" / "status.json.tmp").symlink_to(victim)  # the old fixed name, planted
    state.write_status({"pid": 1})
    assert victim.read_text() == "untouched"
    assert json.loads((tmp_path / "state" / "status.json").read_text()) == {"pid": 1}
    assert not [p for p in (tmp_path / "state").iterdir() if p.name.startswith(".")]
