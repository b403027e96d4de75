"""Discovery values are hints: nothing from DNS-SD or mDNS reaches the device but a checked
endpoint of a peer the API lists, and no value of any source can write a line of its own."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import itertools
import re
from dataclasses import replace
from pathlib import Path

import dns.name
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshpeer.common.endpoints import parse_endpoint
from meshpeer.common.errors import InvalidInput
from meshpeer.dns.naming import instance_name
from meshpeer.peer import uapi
from meshpeer.peer.agent import Agent, Options
from meshpeer.peer.api_decode import remote_peer
from meshpeer.peer.discovery import RemotePeer, api_delta, api_list, sighted
from meshpeer.peer.dnssd import endpoint_hint
from meshpeer.peer.errors import AgentFailed, BackendError
from meshpeer.peer.hints import ENDPOINTS_PER_KEY, MAX_UNLISTED_KEYS
from meshpeer.peer.kernel_wg import KernelBackend, netlink_peer
from meshpeer.peer.lan import MAX_SERVICE_NAMES, LanDiscovery, parse_sighting
from meshpeer.peer.mesh import Mesh
from meshpeer.peer.supervise import supervised
from meshpeer.peer.timers import REPUNCH_S
from meshpeer.peer.uapi import DeviceStatus, PeerConfig, PeerStatus, UapiError
from meshpeer.peer.userspace_wg import UserspaceBackend
from tests.blocking import forbid_on_loop_thread

KEY_A, KEY_B, OWN, STRANGER = (bytes([n]) * 32 for n in (1, 2, 9, 66))
INJECTED = f"\npublic_key={bytes([7] * 32).hex()}\nremove=true"
PUBLIC = ("203.0.113.7", 40000)  # where the rendezvous saw KEY_A
OUR_LAN = ipaddress.IPv4Interface("192.168.1.2/24")
ZONE = dns.name.from_text("mesh.internal")


@pytest.mark.parametrize(
    "peer",
    [
        PeerConfig(KEY_A, (f"10.77.0.2/32{INJECTED}",)),
        PeerConfig(KEY_A, ("10.77.0.2",)),  # a host, not a CIDR
        PeerConfig(KEY_A, ("fe80::%1\nremove=true/64",)),  # ipaddress takes this scope id
        PeerConfig(KEY_A, ("10.77.0.2/32",), (f"203.0.113.7{INJECTED}", 1)),
        PeerConfig(KEY_A, ("10.77.0.2/32",), ("fe80::1%\nremove=true", 1)),
        PeerConfig(KEY_A, ("10.77.0.2/32",), ("rendezvous.example", 51820)),  # not an IP
        PeerConfig(KEY_A, ("10.77.0.2/32",), ("203.0.113.7", 0)),
        PeerConfig(KEY_A, ("10.77.0.2/32",), ("203.0.113.7", 65536)),
        PeerConfig(KEY_A, ("10.77.0.2/32",), None, -1),
        PeerConfig(b"short", ("10.77.0.2/32",)),
    ],
)
def test_the_encoders_refuse_any_value_that_is_not_what_its_line_says(peer: PeerConfig) -> None:
    with pytest.raises(UapiError):
        uapi.set_peers([peer], [])
    with pytest.raises(UapiError):
        netlink_peer(peer)


def test_an_endpoint_with_a_scope_id_is_refused_wherever_it_is_read() -> None:
    for text in ["[fe80::1%\nremove=true]:51820", "[fe80::1%eth0]:51820", "1.2.3.4\n:5"]:
        with pytest.raises(InvalidInput):
            parse_endpoint(text)
        with pytest.raises(UapiError):
            uapi.parse_get(f"public_key={'11' * 32}\nendpoint={text}\nerrno=0\n".encode())
    assert parse_endpoint("[2001:db8::1]:51820") == ("2001:db8::1", 51820)


def test_a_refused_peer_is_a_backend_error_so_the_reconcile_loop_lives_on() -> None:
    calls: list[object] = []

    class NoNetlink:
        def __enter__(self) -> NoNetlink:
            forbid_on_loop_thread("pyroute2.WireGuard")  # as the real one is (conftest.py)
            return self

        def __exit__(self, *_: object) -> None:
            return None

        def set(self, *args: object, **settings: object) -> None:
            calls.append(settings)

    bad = PeerConfig(KEY_A, (f"10.77.0.2/32{INJECTED}",))
    kernel = KernelBackend(wireguard_factory=NoNetlink)
    with pytest.raises(BackendError):
        asyncio.run(kernel.apply([PeerConfig(bytes([2]) * 32, ("10.77.0.3/32",)), bad], []))
    assert calls == []  # refused before anything was sent
    with pytest.raises(BackendError):
        asyncio.run(UserspaceBackend().apply([bad], []))


def listed_mesh() -> Mesh:
    """Our mesh as the API lists it: KEY_A at 10.77.0.2 with one route, seen at PUBLIC."""
    mesh = Mesh(OWN)
    mesh.merge(api_list([RemotePeer(KEY_A, "a", "10.77.0.2", ("192.168.9.0/24",), PUBLIC)]))
    mesh.set_own_lan([OUR_LAN])
    return mesh


def punches(mesh: Mesh, start: float, seconds: int) -> list[tuple[float, tuple[str, int]]]:
    """Each endpoint KEY_A is punched at, second by second, while its path stays down."""
    down = DeviceStatus(peers={KEY_A: PeerStatus(KEY_A)})
    found: list[tuple[float, tuple[str, int]]] = []
    for now in range(int(start), int(start) + seconds):
        found += [(now, c.endpoint) for c in mesh.plan(down, now).set_peers if c.endpoint]
    return found


def test_dns_sd_records_only_add_an_endpoint_after_the_apis_for_a_listed_peer() -> None:
    mesh = listed_mesh()
    hostile_txt = [b"allowed=0.0.0.0/0", b"address=10.77.0.3", b"name=evil"]
    hints = dict(
        filter(
            None,
            [
                endpoint_hint(instance_name(KEY_A, ZONE), 5, "198.51.100.1", hostile_txt),
                endpoint_hint(instance_name(STRANGER, ZONE), 5, "198.51.100.2", hostile_txt),
            ],
        )
    )
    mesh.merge(sighted("dns-sd", {key: [endpoint] for key, endpoint in hints.items()}))
    assert set(mesh.peers) == {KEY_A}
    [peer] = mesh.peers.values()
    assert [(c.endpoint, c.source) for c in mesh.candidates(peer)] == [
        (PUBLIC, "api"),
        (("198.51.100.1", 5), "dns-sd"),
    ]
    [config] = mesh.plan(DeviceStatus(), 100.0).set_peers
    assert config.public_key == KEY_A and config.endpoint == PUBLIC
    assert config.allowed_ips == ("10.77.0.2/32",)  # the API's, and its routes unaccepted
    # Each turn of the API's endpoint punches it twice (the second PUNCH_AGAIN_S in).
    assert punches(mesh, 101, 30) == [
        (102, PUBLIC),
        (110, ("198.51.100.1", 5)),
        (120, PUBLIC),
        (122, PUBLIC),
        (130, ("198.51.100.1", 5)),
    ]


def test_a_peer_the_api_lists_later_gets_the_lan_hint_it_was_seen_with_before() -> None:
    mesh = Mesh(OWN)
    mesh.set_own_lan([OUR_LAN])
    mesh.merge(sighted("lan", {KEY_A: [("192.168.1.5", 51820)]}))
    assert mesh.plan(DeviceStatus(), 100.0).set_peers == []  # a sighting adds no peer
    lan = (("192.168.1.5", 51820),)
    mesh.merge(api_delta([RemotePeer(KEY_A, "a", "10.77.0.2", (), PUBLIC, lan_endpoints=lan)]))
    [config] = mesh.plan(DeviceStatus(), 101.0).set_peers
    assert config.endpoint == ("192.168.1.5", 51820)


def test_a_sighting_the_peer_never_reported_is_not_tried_even_while_coming_up() -> None:
    """A neighbour announces the peer's key at its own address and relays what reaches it to
    the peer's public mapping: the answers are the peer's own, so a pair that punched it would
    come up there, say `lan`, and the neighbour could drop the data (the outside review of
    the LAN upgrade). Only an endpoint the peer reported over the API is a LAN candidate."""
    mesh = listed_mesh()
    mesh.merge(sighted("lan", {KEY_A: [("192.168.1.66", 51820)]}))  # the neighbour's address
    [peer] = mesh.peers.values()
    assert [c.source for c in mesh.candidates(peer)] == ["api"]
    assert all(endpoint == PUBLIC for _, endpoint in punches(mesh, 100, 30))


@pytest.mark.parametrize(
    "endpoint",
    [
        ("192.168.2.5", 51820),  # another subnet
        ("8.8.8.8", 51820),  # the internet
        ("192.168.1.2", 51820),  # ourselves
        ("192.168.1.255", 51820),  # the broadcast address
        ("192.168.1.0", 51820),
        ("127.0.0.1", 51820),
        ("224.0.0.251", 5353),
        ("192.168.1.5", 0),
        ("192.168.1.5\nremove=true", 51820),
        ("fe80::1%eth0", 51820),
    ],
)
def test_a_lan_hint_off_our_subnets_or_not_a_peers_address_is_dropped(
    endpoint: tuple[str, int],
) -> None:
    mesh = listed_mesh()
    mesh.merge(sighted("lan", {KEY_A: [endpoint]}))
    assert mesh.hints.endpoints("lan", KEY_A) == ()


def test_hint_tables_are_bounded() -> None:
    mesh = listed_mesh()
    sightings = {KEY_A: [(f"192.168.1.{100 + n}", 51820) for n in range(30)]}
    sightings |= {
        (n + 1000).to_bytes(32, "big"): [("192.168.1.9", 1)] for n in range(2 * MAX_UNLISTED_KEYS)
    }
    mesh.merge(sighted("lan", sightings))
    assert len(mesh.hints.endpoints("lan", KEY_A)) == ENDPOINTS_PER_KEY["lan"]
    assert len(mesh.hints._found["lan"]) == 1 + MAX_UNLISTED_KEYS


def reporting_mesh(lan: tuple[tuple[str, int], ...]) -> Mesh:
    """listed_mesh, with KEY_A having reported `lan` as its LAN endpoints."""
    mesh = listed_mesh()
    mesh.merge(api_list([replace(mesh.peers[KEY_A], lan_endpoints=lan)]))
    return mesh


def test_30_spoofed_lan_sightings_hold_the_public_endpoint_back_one_turn_at_most() -> None:
    spoofed = [(f"192.168.1.{100 + n}", 51820) for n in range(30)]
    mesh = reporting_mesh((spoofed[0], spoofed[1]))  # the peer's own two: spoofed back at it
    mesh.merge(sighted("lan", {KEY_A: spoofed}))
    tried = punches(mesh, 100, 100)
    first_lan = tried[0][0]
    assert tried[0][1] in spoofed
    public = [now for now, endpoint in tried if endpoint == PUBLIC]
    assert public and public[0] - first_lan <= REPUNCH_S
    assert all(b - a <= 2 * REPUNCH_S for a, b in itertools.pairwise(public))


def test_a_spoofer_that_keeps_changing_its_sightings_cannot_starve_the_public_endpoint() -> None:
    mesh = reporting_mesh((("192.168.1.10", 51820), ("192.168.1.11", 51820)))
    down = DeviceStatus(peers={KEY_A: PeerStatus(KEY_A)})
    public_at, first_lan = [], None
    for now in range(100, 200):  # the peer's two reported endpoints, alternating every second
        mesh.merge(sighted("lan", {KEY_A: [(f"192.168.1.{10 + now % 2}", 51820)]}))
        for config in mesh.plan(down, float(now)).set_peers:
            if config.endpoint == PUBLIC:
                public_at.append(now)
            elif first_lan is None:
                first_lan = now
    assert first_lan is not None and public_at and public_at[0] - first_lan <= REPUNCH_S
    assert all(b - a <= 2 * REPUNCH_S for a, b in itertools.pairwise(public_at))


def test_a_moved_mapping_is_punched_at_once_even_with_lan_hints() -> None:
    mesh = listed_mesh()
    mesh.plan(DeviceStatus(), 100.0)
    using_public = DeviceStatus(peers={KEY_A: PeerStatus(KEY_A, PUBLIC, latest_handshake=100.5)})
    assert mesh.plan(using_public, 101.0).set_peers == []
    mesh.merge(sighted("lan", {KEY_A: [("192.168.1.5", 51820)]}))
    assert mesh.plan(using_public, 102.0).set_peers == []  # a hint never moves a live path
    moved = ("203.0.113.7", 41000)
    mesh.merge(api_delta([RemotePeer(KEY_A, "a", "10.77.0.2", ("192.168.9.0/24",), moved)]))
    [punch] = mesh.plan(using_public, 103.0).set_peers
    assert punch.endpoint == moved and punch.kick


@pytest.mark.parametrize(
    "change",
    [
        {"name": "evil\nremove=true"},
        {"address": "fe80::1%\nremove=true"},
        {"routes": ["10.1.0.0/16\nremove=true"]},
        {"endpoint": "[fe80::1%\nx]:5"},
    ],
)
def test_an_api_peer_with_a_control_character_anywhere_is_skipped(
    change: dict[str, object],
) -> None:
    good = {
        "public_key": base64.b64encode(KEY_A).decode(),
        "name": "a",
        "address": "10.77.0.2",
        "endpoint": "203.0.113.7:5",
        "routes": ["10.1.0.0/16"],
    }
    assert remote_peer(good) is not None
    assert remote_peer({**good, **change}) is None


# Every line set_peers may write, each value in the form the encoder itself writes.
UAPI_LINE = re.compile(
    r"set=1|remove=true|replace_allowed_ips=true|public_key=[0-9a-f]{64}"
    r"|allowed_ip=[0-9a-f.:]+/\d{1,3}|endpoint=(\d{1,3}(\.\d{1,3}){3}|\[[0-9a-f:.]+\]):\d{1,5}"
    r"|persistent_keepalive_interval=\d{1,5}"
)
text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        ["192.168.1.5", "10.77.0.3", "fe80::1%\nremove=true", "::1", "0.0.0.0"]  # noqa: S104
    ),
    st.builds(lambda a, b: f"{a}\n{b}", st.text(max_size=10), st.text(max_size=10)),
)
ports = st.one_of(st.integers(-1, 70000), st.sampled_from([51820, 0, 65535, 65536]))
keys = st.sampled_from([KEY_A, KEY_B, OWN, STRANGER])
txt = st.lists(st.one_of(st.binary(max_size=40), text.map(str.encode)), max_size=6).map(
    lambda strings: [b"allowed=" + s if i % 2 else s for i, s in enumerate(strings)]
)
mdns_answer = st.tuples(
    st.dictionaries(
        st.sampled_from([b"pub", b"allowed", b"x"]), st.none() | st.binary(max_size=50)
    ),
    st.lists(text, max_size=200),
    st.none() | ports,
)


@settings(max_examples=300, deadline=None)
@given(
    dns_answers=st.lists(st.tuples(keys, ports, text, txt), max_size=8),
    mdns_answers=st.lists(st.tuples(keys, mdns_answer), max_size=8),
    times=st.lists(st.floats(0, 1000), min_size=1, max_size=5),
)
def test_no_discovery_value_reaches_the_device_but_a_checked_endpoint(
    dns_answers: list[tuple[bytes, int, str, list[bytes]]],
    mdns_answers: list[tuple[bytes, tuple[dict[bytes, bytes | None], list[str], int | None]]],
    times: list[float],
) -> None:
    mesh = listed_mesh()
    mesh.merge(api_delta([RemotePeer(KEY_B, "b", "10.77.0.3", (), None)]))
    found_dns: dict[bytes, list[tuple[str, int]]] = {}
    for key, port, address, strings in dns_answers:
        hint = endpoint_hint(instance_name(key, ZONE), port, address, strings)
        if hint is not None:
            found_dns.setdefault(hint[0], []).append(hint[1])
    found_lan: dict[bytes, list[tuple[str, int]]] = {}
    for key, (properties, addresses, mdns_port) in mdns_answers:
        properties = {**properties, b"pub": base64.b64encode(key)}
        sighting = parse_sighting(properties, addresses, mdns_port)
        if sighting is not None:
            found_lan.setdefault(sighting[0], []).extend(sighting[1])
    mesh.merge(sighted("dns-sd", found_dns))
    mesh.merge(sighted("lan", found_lan))
    for now in sorted(times):
        plan = mesh.plan(DeviceStatus(), now)
        request = uapi.set_peers(plan.set_peers, plan.remove).decode()
        assert request.endswith("\n\n")
        for line in request[:-2].split("\n"):
            assert UAPI_LINE.fullmatch(line), line
        assert {c.public_key for c in plan.set_peers} <= {KEY_A, KEY_B}
        for config in plan.set_peers:
            assert config.allowed_ips == mesh.allowed_ips(mesh.peers[config.public_key])
            assert (
                config.endpoint is None
                or config.endpoint == PUBLIC
                or (ipaddress.ip_address(config.endpoint[0]) in OUR_LAN.network)
                or config.endpoint in found_dns.get(config.public_key, [])
            )


def test_a_loop_that_fails_stops_the_agent_instead_of_leaving_it_half_alive(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> Agent:
        agent = Agent(Options(state_dir=tmp_path))

        async def broken_reconcile() -> None:
            raise KeyError("a bug")

        # Supervised as the agent runs it: restarted, until it has failed too often.
        loop = supervised("reconcile", broken_reconcile, first_delay_s=0.001)
        task = asyncio.create_task(loop, name="reconcile")
        task.add_done_callback(agent._task_ended)
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.sleep(0)
        return agent

    agent = asyncio.run(scenario())
    assert agent._stopping.is_set() and isinstance(agent._failure, AgentFailed)
    assert "the reconcile loop failed 6 times: KeyError('a bug'); stopping" in caplog.text


def test_mdns_tracks_a_bounded_number_of_service_names_and_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    lan = LanDiscovery(OWN, "me", 51820, ["192.168.1.2"], lambda sightings: None)
    for n in range(MAX_SERVICE_NAMES):
        assert lan._room_for(f"peer{n}._wireguard._udp.local.")
        lan._sightings[f"peer{n}._wireguard._udp.local."] = (KEY_A, [("192.168.1.5", 1)])
    assert lan._room_for("peer0._wireguard._udp.local.")  # a known name may still change
    assert not lan._room_for("one-more._wireguard._udp.local.")
    assert not lan._room_for("and-another._wireguard._udp.local.")
    assert caplog.text.count("ignoring new ones") == 1


def test_mdns_resolves_a_bounded_number_of_names_at_once() -> None:
    from zeroconf import ServiceStateChange

    from meshpeer.peer.lan import MAX_PENDING_RESOLVES

    async def scenario() -> tuple[int, int]:
        lan = LanDiscovery(OWN, "me", 51820, ["192.168.1.2"], lambda sightings: None)
        for n in range(4 * MAX_PENDING_RESOLVES):
            name = f"peer{n}._wireguard._udp.local."
            lan._on_service_state_change(None, "", name, ServiceStateChange.Added)
        pending = len(lan._resolving)
        await asyncio.gather(*lan._resolving.values())
        return pending, len(lan._resolving)

    assert asyncio.run(scenario()) == (MAX_PENDING_RESOLVES, 0)


def test_an_mdns_answer_yields_a_bounded_number_of_endpoints() -> None:
    from meshpeer.peer.lan import MAX_ADDRESSES_PER_NAME

    pub = base64.b64encode(KEY_A)
    addresses = [f"192.168.1.{n}" for n in range(10, 100)]
    sighting = parse_sighting({b"pub": pub}, addresses, 51820)
    assert sighting is not None and len(sighting[1]) == MAX_ADDRESSES_PER_NAME
