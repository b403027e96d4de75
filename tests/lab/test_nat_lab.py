"""The lab's NATs behave as RFC 4787 names them, shown with plain UDP sockets and reflectors."""

from __future__ import annotations

import pytest

from tests.lab import Lab, NatType, UdpSocket

pytestmark = pytest.mark.lab

ALL_TYPES = list(NatType)
# Which unsolicited senders reach a mapping made by talking to reflector r1:3478.
LET_IN = {
    NatType.FULL_CONE: {"r1:3479", "r2:3478"},
    NatType.ADDRESS_RESTRICTED: {"r1:3479"},
    NatType.PORT_RESTRICTED: set(),
    NatType.SYMMETRIC: set(),
}


def received(sock: UdpSocket, wait_s: float = 0.7) -> list[tuple[str, tuple[str, int]]]:
    datagrams = []
    while (datagram := sock.recv(wait_s)) is not None:
        datagrams.append(datagram)
    return datagrams


@pytest.mark.parametrize("nat_type", ALL_TYPES, ids=lambda t: t.value)
def test_mapping_is_kept_or_changed_per_destination(lab: Lab, nat_type: NatType) -> None:
    r1, r2 = lab.add_public_host("r1"), lab.add_public_host("r2")
    nat = lab.add_nat("nat", nat_type)
    sock = nat.add_host("a").udp_socket(4000)
    reflectors = [r1.start_reflector(3478), r1.start_reflector(3479), r2.start_reflector(3478)]

    asked = [sock.ask(reflector.address) for reflector in reflectors]

    mappings = [mapping for mapping in asked if mapping is not None]
    assert len(mappings) == len(reflectors), f"a reflector did not answer: {asked}"
    assert {ip for ip, _ in mappings} == {str(nat.public_address)}
    ports = {port for _, port in mappings}
    if nat_type.endpoint_independent_mapping:
        assert len(ports) == 1, f"one mapping for every destination, got {mappings}"
    else:
        assert len(ports) == 3, f"a new mapping per destination, got {mappings}"


@pytest.mark.parametrize("nat_type", ALL_TYPES, ids=lambda t: t.value)
def test_unsolicited_packets_are_let_in_as_declared(lab: Lab, nat_type: NatType) -> None:
    r1, r2 = lab.add_public_host("r1"), lab.add_public_host("r2")
    nat = lab.add_nat("nat", nat_type)
    sock = nat.add_host("a").udp_socket(4000)
    reflector = r1.start_reflector(3478)
    mapping = sock.ask(reflector.address)
    assert mapping is not None
    senders = {"r1:3479": r1.udp_socket(3479), "r2:3478": r2.udp_socket(3478)}

    for name, sender in senders.items():
        sender.send(mapping, name)

    assert {data for data, _ in received(sock)} == LET_IN[nat_type]
    # The reflector that was asked is always let back in: the filter is not simply closed.
    assert sock.ask(reflector.address) == mapping


@pytest.mark.parametrize("nat_type", ALL_TYPES, ids=lambda t: t.value)
def test_a_dropped_probe_does_not_spoil_the_later_mapping(lab: Lab, nat_type: NatType) -> None:
    """The hole-punching primitive: B's packet is dropped, A's packet to B then opens the way.

    If the router confirmed a conntrack entry for B's unsolicited packet, A's packet to B would
    need a different public port, and B's answer to the port it knows would bounce.
    """
    r1, r2 = lab.add_public_host("r1"), lab.add_public_host("r2")
    nat = lab.add_nat("nat", nat_type)
    sock = nat.add_host("a").udp_socket(4000)
    mapping = sock.ask(r1.start_reflector(3478).address)
    assert mapping is not None
    outsider = r2.udp_socket(3478)
    outsider.send(mapping, "early")
    received(sock, 0.3)

    sock.send((str(r2.address), 3478), "punch")
    punched = outsider.recv(2.0)
    assert punched is not None and punched[0] == "punch"
    outsider.send(punched[1], "answer")

    assert [data for data, _ in received(sock)] == ["answer"]
    if nat_type.endpoint_independent_mapping:
        assert punched[1] == mapping, "the punch must leave from the mapping the reflector saw"


@pytest.mark.parametrize("hairpin", [True, False], ids=["hairpin_on", "hairpin_off"])
@pytest.mark.parametrize("nat_type", ALL_TYPES, ids=lambda t: t.value)
def test_hairpinning_works_only_when_on(lab: Lab, nat_type: NatType, hairpin: bool) -> None:
    reflector = lab.add_public_host("r1").start_reflector(3478)
    nat = lab.add_nat("nat", nat_type, hairpin=hairpin)
    sock_a = nat.add_host("a").udp_socket(4000)
    sock_b = nat.add_host("b").udp_socket(4000)
    mapping_a = sock_a.ask(reflector.address)
    mapping_b = sock_b.ask(reflector.address)
    assert mapping_a is not None and mapping_b is not None

    sock_a.send(mapping_b, "hairpinned")
    got = received(sock_b)

    if not hairpin:
        assert got == []
        return
    assert [data for data, _ in got] == ["hairpinned"]
    source = got[0][1]
    assert source[0] == str(nat.public_address), "hairpinned packets come from the public side"
    if nat_type.endpoint_independent_mapping:
        assert source == mapping_a


def test_reset_gives_a_new_mapping(lab: Lab) -> None:
    reflector = lab.add_public_host("r1").start_reflector(3478)
    nat = lab.add_nat("nat", NatType.PORT_RESTRICTED)
    sock = nat.add_host("a").udp_socket(4000)
    before = sock.ask(reflector.address)

    nat.reset_mappings()

    after = sock.ask(reflector.address)
    assert before is not None and after is not None
    assert after[0] == before[0] and after[1] != before[1], nat.nat_state()


def test_carrier_grade_nat_puts_a_nat_behind_a_nat(lab: Lab) -> None:
    reflector = lab.add_public_host("r1").start_reflector(3478)
    isp = lab.add_nat("isp", NatType.PORT_RESTRICTED, lan="100.64.0.0/24")
    home = lab.add_nat("home", NatType.PORT_RESTRICTED, upstream=isp)
    sock = home.add_host("a").udp_socket(4000)

    mapping = sock.ask(reflector.address)

    assert str(home.public_address).startswith("100.64.0.")
    assert mapping is not None and mapping[0] == str(isp.public_address)


def test_each_host_has_its_own_run_folder(lab: Lab) -> None:
    nat = lab.add_nat("nat", NatType.PORT_RESTRICTED)
    a, b = nat.add_host("a"), nat.add_host("b")

    a.run(["sh", "-c", "mkdir -p /run/wireguard && echo a > /run/wireguard/marker"])

    assert a.run(["cat", "/var/run/wireguard/marker"]).stdout == "a\n"
    assert b.run(["cat", "/var/run/wireguard/marker"], check=False).returncode != 0
    assert (a.rundir / "wireguard" / "marker").exists()


def test_hosts_reach_the_internet_and_their_gateway(lab: Lab) -> None:
    server = lab.add_public_host("server")
    nat = lab.add_nat("nat", NatType.SYMMETRIC)
    host = nat.add_host("a")

    assert host.ping(server.address)
    assert host.ping(nat.lan.gateway or "")
    assert not server.ping(host.address), "a private address is not routed on the internet"
