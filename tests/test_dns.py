"""The DNS-SD zone and the authoritative server's core, without a network."""

from __future__ import annotations

import base64
import ipaddress
import os

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdatatype
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshpeer.dns.instances import BadRecord, decode_instance
from meshpeer.dns.naming import BadLabel, instance_label, instance_name, key_from_label
from meshpeer.dns.ratelimit import ResponseRateLimiter, Verdict
from meshpeer.dns.records import PeerEntry, Zone, ZoneConfig
from meshpeer.dns.server import Authority, Transfer

ORIGIN = dns.name.from_text("mesh.example.")
SERVICE = "_wireguard._udp.mesh.example."
CLIENT = "198.51.100.20"


def over_tcp(authority: Authority, wire: bytes, client: str = CLIENT) -> list[bytes]:
    """What the TCP adapter sends: a transfer rendered (here, not in a thread) and kept."""
    answers = authority.answer_tcp(wire, client)
    if isinstance(answers, Transfer):
        messages = answers.messages()
        authority.remember_transfer(answers, messages)
        return messages
    return answers


def make_zone(ttl: int = 0) -> Zone:
    return Zone(ZoneConfig(ORIGIN, ttl, "203.0.113.1"), serial=100)


def entry(index: int, endpoint: tuple[str, int] | None = ("203.0.113.9", 40000)) -> PeerEntry:
    key = index.to_bytes(4, "big") + os.urandom(28)
    return PeerEntry(
        key,
        f"peer{index}",
        f"10.77.{index // 250}.{index % 250 + 2}",
        (f"10.77.{index // 250}.{index % 250 + 2}/32", "192.168.7.0/24"),
        endpoint,
    )


def ask(
    authority: Authority,
    name: str,
    rdtype: str = "A",
    *,
    tcp: bool = False,
    payload: int | None = 1232,
) -> dns.message.Message:
    query = dns.message.make_query(
        name, rdtype, use_edns=payload is not None, payload=payload or 512
    )
    if tcp:
        [wire] = over_tcp(authority, query.to_wire())
    else:
        answer = authority.answer_udp(query.to_wire(), CLIENT, 0.0)
        assert answer is not None
        wire = answer
    response = dns.message.from_wire(wire)
    assert response.id == query.id and response.flags & dns.flags.QR
    return response


def records(response: dns.message.Message, section: str = "answer") -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for rrset in getattr(response, section):
        found.setdefault(dns.rdatatype.to_text(rrset.rdtype), []).extend(
            rdata.to_text() for rdata in rrset
        )
    return found


def test_instance_labels_are_wgsd_base32_matched_in_any_case() -> None:
    key = bytes(range(32))
    label = instance_label(key)
    assert label == base64.b32encode(key).decode().lower() and len(label) == 56
    assert label.endswith("====")
    assert key_from_label(label.upper()) == key == key_from_label(label)
    for bad in ["", "a" * 56, label[:-1], "!" * 56]:
        with pytest.raises(BadLabel):
            key_from_label(bad)


def test_a_peer_with_an_endpoint_is_published_as_wgsd_does() -> None:
    zone = make_zone()
    peer = entry(1, ("203.0.113.9", 40000))
    zone.put(peer)
    authority = Authority(zone)
    instance = instance_name(peer.public_key, ORIGIN).to_text()

    ptr = ask(authority, SERVICE, "PTR")
    assert records(ptr) == {"PTR": [instance]}
    srv = ask(authority, instance.upper(), "SRV")  # wgsd's client asks in upper case
    assert srv.flags & dns.flags.AA and not srv.flags & dns.flags.RA
    assert records(srv) == {"SRV": [f"0 0 40000 {instance}"]}
    additional = records(srv, "additional")
    assert additional["A"] == ["203.0.113.9"]
    pub = base64.b64encode(peer.public_key).decode()
    assert additional["TXT"] == [
        f'"txtvers=1" "pub={pub}" "allowed=10.77.0.3/32,192.168.7.0/24" '
        '"name=peer1" "address=10.77.0.3"'
    ]
    assert srv.answer[0].name.to_text() == instance.upper()  # the query's case is kept
    assert records(ask(authority, "PEER1.mesh.example.", "A")) == {"A": ["10.77.0.3"]}


def test_an_ipv6_endpoint_gets_aaaa() -> None:
    zone = make_zone()
    peer = entry(1, ("2001:db8::7", 51820))
    zone.put(peer)
    instance = instance_name(peer.public_key, ORIGIN).to_text()
    assert records(ask(Authority(zone), instance, "AAAA")) == {"AAAA": ["2001:db8::7"]}


def test_a_peer_without_an_endpoint_has_only_its_mesh_name() -> None:
    zone = make_zone()
    peer = entry(1, endpoint=None)
    zone.put(peer)
    authority = Authority(zone)
    instance = instance_name(peer.public_key, ORIGIN).to_text()
    assert ask(authority, instance, "SRV").rcode() == dns.rcode.NXDOMAIN
    empty = ask(authority, SERVICE, "PTR")
    assert empty.rcode() == dns.rcode.NOERROR and not empty.answer
    assert records(ask(authority, "peer1.mesh.example.", "A")) == {"A": ["10.77.0.3"]}


def test_negative_answers_errors_and_the_apex() -> None:
    zone = make_zone()
    zone.put(entry(1))
    authority = Authority(zone)
    nxdomain = ask(authority, "nobody.mesh.example.")
    assert nxdomain.rcode() == dns.rcode.NXDOMAIN and records(nxdomain, "authority").keys() == {
        "SOA"
    }
    nodata = ask(authority, "peer1.mesh.example.", "MX")
    assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer
    assert "SOA" in records(nodata, "authority")
    assert ask(authority, "_udp.mesh.example.").rcode() == dns.rcode.NOERROR  # empty non-terminal
    assert ask(authority, "example.com.").rcode() == dns.rcode.REFUSED
    assert ask(authority, "example.").rcode() == dns.rcode.REFUSED  # the parent is not ours
    soa = ask(authority, "MESH.example.", "SOA")
    assert records(soa)["SOA"][0].split()[2:3] == ["101"]  # the serial moved with the change
    ns = ask(authority, "mesh.example.", "NS")
    assert records(ns) == {"NS": ["ns.mesh.example."]}
    assert records(ns, "additional")["A"] == ["203.0.113.1"]
    enumeration = ask(authority, "_services._dns-sd._udp.mesh.example.", "PTR")
    assert records(enumeration) == {"PTR": [SERVICE]}
    # The rendezvous has no interface on the mesh, so its mesh address is not published.
    assert ask(authority, "rendezvous.mesh.example.").rcode() == dns.rcode.NXDOMAIN


def test_opcodes_versions_and_garbage() -> None:
    authority = Authority(make_zone())
    notify = dns.message.make_query("mesh.example.", "SOA")
    notify.set_opcode(dns.opcode.NOTIFY)
    answer = authority.answer_udp(notify.to_wire(), CLIENT, 0)
    assert answer is not None and dns.message.from_wire(answer).rcode() == dns.rcode.NOTIMP
    future = dns.message.make_query("mesh.example.", "SOA", use_edns=1)
    answer = authority.answer_udp(future.to_wire(), CLIENT, 0)
    assert answer is not None and dns.message.from_wire(answer).rcode() == dns.rcode.BADVERS
    garbage = b"\x12\x34\x01\x00\x00\x01" + os.urandom(20)
    answer = authority.answer_udp(garbage, CLIENT, 0)
    assert answer is not None
    parsed = dns.message.from_wire(answer)
    assert parsed.id == 0x1234 and parsed.rcode() == dns.rcode.FORMERR
    assert authority.answer_udp(b"\x00" * 5, CLIENT, 0) is None  # not even a header
    response = dns.message.make_response(dns.message.make_query("mesh.example.", "SOA"))
    assert authority.answer_udp(response.to_wire(), CLIENT, 0) is None  # never answer answers
    axfr_over_udp = ask(authority, "mesh.example.", "AXFR")
    assert axfr_over_udp.rcode() == dns.rcode.REFUSED


def test_big_answers_truncate_over_udp_and_fill_tcp() -> None:
    zone = make_zone()
    for index in range(900):
        zone.put(entry(index))
    authority = Authority(zone)
    udp = ask(authority, SERVICE, "PTR", payload=4096)
    assert udp.flags & dns.flags.TC and not udp.answer
    tcp = ask(authority, SERVICE, "PTR", tcp=True)
    assert not tcp.flags & dns.flags.TC and len(tcp.answer[0]) == 900
    small = make_zone()
    for index in range(5):
        small.put(entry(index))
    classic = ask(Authority(small), SERVICE, "PTR", payload=None)  # 512 bytes: 5 fit
    assert not classic.flags & dns.flags.TC and len(classic.answer[0]) == 5
    for index in range(5, 12):
        small.put(entry(index))
    assert ask(Authority(small), SERVICE, "PTR", payload=None).flags & dns.flags.TC
    assert not ask(Authority(small), SERVICE, "PTR", payload=1232).flags & dns.flags.TC


def test_a_padded_query_for_the_instances_is_answered() -> None:
    """RFC 8467 padding rounds the answer up, so one PTR more may add nothing: the PTR set was
    sized by dividing by that and raised ZeroDivisionError (found by the fast path's property
    test)."""
    zone = make_zone()
    for index in range(3):
        zone.put(entry(index))
    padding = dns.edns.GenericOption(dns.edns.OptionType.PADDING, b"\x00\x00")
    query = dns.message.make_query(SERVICE, "PTR", use_edns=0, options=[padding])
    for tcp in (False, True):
        [wire] = (
            over_tcp(Authority(zone), query.to_wire())
            if tcp
            else [Authority(zone).answer_udp(query.to_wire(), CLIENT, 0.0) or b""]
        )
        assert len(dns.message.from_wire(wire).answer[0]) == 3


def test_padding_never_pushes_an_answer_past_the_clients_size() -> None:
    """RFC 7830 4: pad only within the client's UDP size. Answers a little under it, once
    padded, raised dnspython's TooBig out of the server."""
    padding = dns.edns.GenericOption(dns.edns.OptionType.PADDING, b"\x00\x00")
    for routes in range(0, 80, 3):
        zone = make_zone()
        allowed = tuple(f"172.16.{n}.0/24" for n in range(routes))
        zone.put(
            PeerEntry(bytes(32), "peer1", "10.77.0.2", ("10.77.0.2/32", *allowed), ("192.0.2.1", 1))
        )
        question = instance_name(bytes(32), ORIGIN)
        for payload in (512, 1232):
            query = dns.message.make_query(
                question, "TXT", use_edns=0, payload=payload, options=[padding]
            )
            wire = Authority(zone).answer_udp(query.to_wire(), CLIENT, 0.0) or b""
            assert len(wire) <= payload and dns.message.from_wire(wire).id == query.id


def test_3000_peers_do_not_fit_one_message_so_tcp_says_so_and_axfr_has_them_all() -> None:
    zone = make_zone()
    for index in range(3000):
        zone.put(entry(index))
    authority = Authority(zone)
    query = dns.message.make_query(SERVICE, "PTR")
    [wire] = over_tcp(authority, query.to_wire())
    assert len(wire) <= 65535
    tcp = dns.message.from_wire(wire)
    assert tcp.flags & dns.flags.TC and 900 < len(tcp.answer[0]) < 3000
    transfer = dns.message.make_query("mesh.example.", "AXFR")
    [refused] = over_tcp(authority, transfer.to_wire(), CLIENT)  # AXFR is off by default
    assert dns.message.from_wire(refused).rcode() == dns.rcode.REFUSED
    authority.axfr_allow = (ipaddress.ip_network("198.51.100.0/24"),)
    for _ in range(2):  # made once, then from the cache of this serial
        wires = list(over_tcp(authority, transfer.to_wire(), CLIENT))
        messages = [dns.message.from_wire(w) for w in wires]
        ptrs = sum(len(r) for m in messages for r in m.answer if r.rdtype == dns.rdatatype.PTR)
        assert ptrs == 3000 + 1  # every instance, and the service enumeration
        first, last = messages[0].answer[0], messages[-1].answer[-1]
        assert first.rdtype == last.rdtype == dns.rdatatype.SOA
        assert {m.id for m in messages} == {transfer.id}
    [elsewhere] = over_tcp(authority, transfer.to_wire(), "192.0.2.1")
    assert dns.message.from_wire(elsewhere).rcode() == dns.rcode.REFUSED


def test_changes_show_in_the_next_answer() -> None:
    zone = make_zone()
    authority = Authority(zone)
    peer = entry(1, ("203.0.113.9", 40000))
    instance = instance_name(peer.public_key, ORIGIN).to_text()
    assert ask(authority, instance, "SRV").rcode() == dns.rcode.NXDOMAIN
    zone.put(peer)
    assert records(ask(authority, instance, "SRV"))["SRV"] == [f"0 0 40000 {instance}"]
    zone.put(PeerEntry(peer.public_key, "renamed", peer.address, peer.allowed, ("203.0.113.9", 1)))
    assert records(ask(authority, instance, "SRV"))["SRV"] == [f"0 0 1 {instance}"]
    assert ask(authority, "peer1.mesh.example.").rcode() == dns.rcode.NXDOMAIN
    assert records(ask(authority, "renamed.mesh.example."))["A"] == ["10.77.0.3"]
    zone.remove(peer.public_key)
    assert ask(authority, instance, "SRV").rcode() == dns.rcode.NXDOMAIN
    assert not ask(authority, SERVICE, "PTR").answer


def test_the_rate_limiter_bounds_answers_per_network_and_its_table() -> None:
    limiter = ResponseRateLimiter(10, slip=2, max_networks=100)
    verdicts = [limiter.check("198.51.100.7", 0.0) for _ in range(30)]
    assert verdicts[:10] == [Verdict.SEND] * 10
    assert verdicts[10:].count(Verdict.SLIP) == 10 and verdicts[10:].count(Verdict.DROP) == 10
    assert limiter.check("198.51.100.200", 0.0) is not Verdict.SEND  # the same /24
    assert limiter.check("198.51.101.7", 0.0) is Verdict.SEND  # another network
    assert limiter.check("198.51.100.7", 1.0) is Verdict.SEND  # a second later: refilled
    for network in range(1000):
        limiter.check(f"10.{network // 256}.{network % 256}.1", 2.0)
    assert len(limiter) == 100


def test_the_server_stays_silent_for_a_rate_limited_flood() -> None:
    zone = make_zone()
    authority = Authority(zone, ResponseRateLimiter(50))
    query = dns.message.make_query("mesh.example.", "SOA").to_wire()
    answers = [authority.answer_udp(query, "203.0.113.50", 0.0) for _ in range(1000)]
    sent = [a for a in answers if a is not None]
    full = [a for a in sent if not dns.message.from_wire(a).flags & dns.flags.TC]
    assert len(full) == 50 and len(sent) < 550
    assert authority.counts["rate_limited"] >= 450


def test_decoding_reads_what_the_zone_writes() -> None:
    zone = make_zone()
    peer = entry(7, ("203.0.113.9", 40000))
    zone.put(peer)
    instance = instance_name(peer.public_key, ORIGIN)
    srv = ask(Authority(zone), instance.to_text(), "SRV")
    extra = {rrset.rdtype: rrset for rrset in srv.additional}
    txt = [s for rdata in extra[dns.rdatatype.TXT] for s in rdata.strings]
    found = decode_instance(instance, srv.answer[0][0].port, extra[dns.rdatatype.A][0].address, txt)
    assert found.public_key == peer.public_key and found.endpoint == ("203.0.113.9", 40000)
    assert found.allowed == peer.allowed and found.name == "peer7"
    other = base64.b64encode(bytes(32)).decode().encode()
    with pytest.raises(BadRecord, match="pub="):
        decode_instance(instance, 40000, "203.0.113.9", [b"txtvers=1", b"pub=" + other])
    with pytest.raises(BadRecord):
        decode_instance(instance, 0, "203.0.113.9", [])
    with pytest.raises(BadRecord):
        decode_instance(instance, 1, "not-an-ip", [])


def test_many_routes_split_allowed_over_txt_strings() -> None:
    zone = make_zone()
    routes = tuple(f"172.{16 + n // 256}.{n % 256}.0/24" for n in range(40))
    peer = PeerEntry(
        os.urandom(32), "router", "10.77.0.2", ("10.77.0.2/32", *routes), ("203.0.113.9", 1)
    )
    zone.put(peer)
    instance = instance_name(peer.public_key, ORIGIN)
    txt = ask(Authority(zone), instance.to_text(), "TXT").answer[0][0]
    assert all(len(s) <= 255 for s in txt.strings)
    found = decode_instance(instance, 1, "203.0.113.9", txt.strings)
    assert found.allowed == peer.allowed


FUZZ_ZONE = make_zone()
for _index in range(20):
    FUZZ_ZONE.put(entry(_index))
VALID_QUERIES = [
    dns.message.make_query(name, rdtype).to_wire()
    for name, rdtype in [(SERVICE, "PTR"), ("peer1.mesh.example.", "A"), ("x.example.", "TXT")]
]


@settings(max_examples=400, deadline=None)
@given(
    data=st.one_of(
        st.binary(max_size=600),
        st.tuples(
            st.sampled_from(VALID_QUERIES),
            st.lists(st.tuples(st.integers(0, 80), st.integers(0, 255)), max_size=6),
        ).map(lambda args: _mutate(*args)),
    ),
    tcp=st.booleans(),
)
def test_random_and_mutated_queries_never_crash_the_server(data: bytes, tcp: bool) -> None:
    authority = Authority(FUZZ_ZONE, ResponseRateLimiter(1e9))
    answers = over_tcp(authority, data) if tcp else [authority.answer_udp(data, CLIENT, 0.0)]
    for answer in answers:
        if answer is None:
            continue
        assert len(answer) <= 65535
        parsed = dns.message.from_wire(answer)
        assert parsed.flags & dns.flags.QR and parsed.id == int.from_bytes(data[:2], "big")


def _mutate(wire: bytes, changes: list[tuple[int, int]]) -> bytes:
    mutable = bytearray(wire)
    for position, value in changes:
        if position < len(mutable):
            mutable[position] = value
    return bytes(mutable)


def test_repeated_queries_are_answered_from_the_cache_and_never_stale() -> None:
    zone = make_zone()
    peer = entry(1)
    zone.put(peer)
    authority = Authority(zone)
    instance = instance_name(peer.public_key, ORIGIN).to_text()
    srv = ask(authority, instance, "SRV")
    for _ in range(3):  # new IDs each time (make_query picks one): each answer carries its own
        assert records(ask(authority, instance, "SRV")) == records(srv)
    assert authority.cache_hits == 3
    assert authority.counts["NOERROR"] == 4

    shouting = instance.upper()  # a query's case is part of the key, and comes back as asked
    assert ask(authority, shouting, "SRV").question[0].name.to_text() == shouting
    assert ask(authority, shouting, "SRV").question[0].name.to_text() == shouting

    zone.put(PeerEntry(peer.public_key, peer.name, peer.address, peer.allowed, ("203.0.113.9", 41)))
    assert records(ask(authority, instance, "SRV"))["SRV"][0].split()[2] == "41"
    assert ask(authority, "nobody.mesh.example.").rcode() == dns.rcode.NXDOMAIN
    zone.put(entry(2))
    nxdomain = ask(authority, "nobody.mesh.example.")
    assert nxdomain.authority[0][0].serial == zone.serial  # a negative answer's SOA is current


def test_a_change_forgets_only_the_answers_of_the_names_it_changed() -> None:
    zone = make_zone()
    still, moving = entry(1), entry(2)
    zone.put(still)
    zone.put(moving)
    authority = Authority(zone)
    still_instance = instance_name(still.public_key, ORIGIN).to_text()
    moving_instance = instance_name(moving.public_key, ORIGIN).to_text()
    questions = [(still_instance, "SRV"), ("peer1.mesh.example.", "A"), (moving_instance, "SRV")]
    for name, rdtype in questions:
        ask(authority, name, rdtype)
    for port in range(41000, 41010):  # the moving peer's NAT mapping moves ten times
        zone.put(
            PeerEntry(
                moving.public_key,
                moving.name,
                moving.address,
                moving.allowed,
                ("203.0.113.9", port),
            )
        )
        hits = authority.cache_hits
        for name, rdtype in questions[:2]:
            ask(authority, name, rdtype)
        assert authority.cache_hits == hits + 2  # the still peer's answers survive
        srv = records(ask(authority, moving_instance, "SRV"))["SRV"][0]
        assert srv.split()[2] == str(port)  # and the moved one is never stale
    zone.remove(still.public_key)
    assert ask(authority, still_instance, "SRV").rcode() == dns.rcode.NXDOMAIN
    assert ask(authority, "peer1.mesh.example.").rcode() == dns.rcode.NXDOMAIN
    ptr = ask(authority, SERVICE, "PTR")
    assert len(ptr.answer[0]) == 1  # the PTR set shrank with the removal


def test_a_cache_too_far_behind_the_zone_starts_afresh() -> None:
    zone = make_zone()
    authority = Authority(zone)
    ask(authority, "peer7.mesh.example.")
    for number in range(5000):  # more changes than the zone remembers
        zone.put(entry(number))
    assert zone.changed_since(100) is None
    assert ask(authority, "peer7.mesh.example.").rcode() == dns.rcode.NOERROR


def test_the_answer_cache_is_bounded() -> None:
    authority = Authority(make_zone(), answer_cache=8)
    for number in range(50):
        ask(authority, f"nobody{number}.mesh.example.")
    assert len(authority._cache) == 8
