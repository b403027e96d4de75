"""The fast path (meshpeer.dns.wire, meshpeer.dns.fastpath) against the dnspython path.

Hex vectors written out from RFC 1035 4.1 by hand; then properties: over generated zones and
queries, the fast path either declines or answers what the dnspython path answers (the same
message once parsed, TTLs and name case included, and the same size, so both truncate alike);
and no bytes make it raise anything but `Declined`.
"""

from __future__ import annotations

import random
import struct

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from meshpeer.dns.fastpath import FastPath
from meshpeer.dns.naming import instance_name
from meshpeer.dns.records import PeerEntry, Zone, ZoneConfig
from meshpeer.dns.server import DEFAULT_MAX_UDP_PAYLOAD, OUR_EDNS_PAYLOAD, Authority
from meshpeer.dns.wire import Declined, parse_query

ORIGIN = dns.name.from_text("mesh.example.")
CLIENT = "198.51.100.20"


def fast_path(zone: Zone) -> FastPath:
    return FastPath(zone, DEFAULT_MAX_UDP_PAYLOAD, OUR_EDNS_PAYLOAD)


def one_peer_zone() -> Zone:
    zone = Zone(ZoneConfig(ORIGIN, 60, "203.0.113.1"), serial=100)
    zone.put(PeerEntry(bytes(range(32)), "peer1", "10.77.0.3", ("10.77.0.3/32",), None))
    return zone  # serial 101 now


# -- vectors --------------------------------------------------------------------------------

QUESTION_A = "05 5045455231 04 6d657368 07 6578616d706c65 00 0001 0001"  # PEER1.mesh.example. A
QUESTION_NX = "06 6e6f626f6479 04 6d657368 07 6578616d706c65 00 0001 0001"  # nobody.mesh.example.
OPT_1232 = "00 0029 04d0 00000000 0000"


def hex_bytes(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


def test_an_a_record_in_the_query_case_without_edns() -> None:
    query = hex_bytes("1234 0100 0001 0000 0000 0000" + QUESTION_A)  # RD set
    expected = hex_bytes(
        "1234 8500 0001 0001 0000 0000"  # QR AA RD, one answer
        + QUESTION_A
        + "c00c 0001 0001 0000003c 0004 0a4d0003"  # owner: a pointer to the question
    )
    assert fast_path(one_peer_zone()).answer(query).wire == expected


def test_nxdomain_carries_the_soa_with_its_names_compressed() -> None:
    query = hex_bytes("abcd 0000 0001 0000 0000 0001" + QUESTION_NX + OPT_1232)
    soa = (
        "c013 0006 0001 0000003c 0026"  # owner mesh.example., at offset 19 of the question
        "02 6e73 c013"  # ns.mesh.example.
        "0a 686f73746d6173746572 c013"  # hostmaster.mesh.example.
        "00000065 00000e10 00000258 00015180 0000003c"  # serial 101, timers, negative TTL
    )
    expected = hex_bytes("abcd 8403 0001 0000 0001 0001" + QUESTION_NX + soa + OPT_1232)
    answer = fast_path(one_peer_zone()).answer(query)
    assert answer.wire == expected
    assert answer.rcode == dns.rcode.NXDOMAIN


@pytest.mark.parametrize(
    "query",
    [
        "1234 0000 0001 0000 0000 0000 c00c 0001 0001",  # a pointer in the question
        "1234 0800 0001 0000 0000 0000" + QUESTION_A,  # opcode IQUERY
        "1234 0000 0002 0000 0000 0000" + QUESTION_A + QUESTION_A,  # two questions
        "1234 0000 0001 0000 0000 0001" + QUESTION_A + "00 0029 04d0 00008000 0000",  # DO
        "1234 0000 0001 0000 0000 0001" + QUESTION_A + "00 0029 04d0 00010000 0000",  # v1
        "1234 0000 0001 0000 0000 0001" + QUESTION_A + "00 0029 04d0 00000000 0004 0003 0000",
        "1234 0000 0001 0000 0000 0000" + QUESTION_A[:-4] + "0003",  # class CH
        "1234 0000 0001 0000 0000 0000" + QUESTION_A[:-9] + "00fc 0001",  # AXFR
        "1234 0000 0001 0000 0000 0000" + QUESTION_A + "00",  # a trailing octet
        "1234 0000 0001 0000",  # short
    ],
)
def test_unusual_queries_are_declined(query: str) -> None:
    with pytest.raises(Declined):
        fast_path(one_peer_zone()).answer(hex_bytes(query))


def test_a_cookie_is_read_and_not_echoed_as_before() -> None:
    cookie = "000a 0008 0102030405060708"
    query = hex_bytes("1234 0000 0001 0000 0000 0001" + QUESTION_A + "00 0029 04d0 00000000 000c")
    query += hex_bytes(cookie)
    assert parse_query(query).edns_payload == 1232
    answer = fast_path(one_peer_zone()).answer(query).wire
    assert answer.endswith(hex_bytes(OPT_1232))


def test_the_common_queries_take_the_fast_path_and_see_changes() -> None:
    zone = Zone(ZoneConfig(ORIGIN, 0, "203.0.113.1"))
    key = bytes(range(32))
    zone.put(PeerEntry(key, "peer1", "10.77.0.3", ("10.77.0.3/32",), ("192.0.2.1", 40000)))
    authority = Authority(zone, answer_cache=0)
    instance = instance_name(key, ORIGIN).to_text()
    asked = [
        (instance, "SRV"),
        (instance, "TXT"),
        (instance, "A"),
        (instance, "AAAA"),
        ("peer1.mesh.example.", "A"),
        ("_wireguard._udp.mesh.example.", "PTR"),
        ("nobody.mesh.example.", "A"),
        ("_udp.mesh.example.", "A"),
    ]
    for name, rdtype in asked:
        authority.answer_udp(dns.message.make_query(name, rdtype).to_wire(), CLIENT, 0.0)
    assert authority.fast_answers == len(asked)
    zone.put(PeerEntry(key, "peer1", "10.77.0.3", ("10.77.0.3/32",), ("192.0.2.9", 40001)))
    query = dns.message.make_query(instance, "SRV")
    answer = dns.message.from_wire(authority.answer_udp(query.to_wire(), CLIENT, 0.0) or b"")
    assert answer.additional[0][0].to_text() == "192.0.2.9"
    assert answer.answer[0][0].port == 40001


def test_answers_too_big_for_512_octets_truncate_as_before() -> None:
    zone = Zone(ZoneConfig(ORIGIN, 0, "203.0.113.1"))
    routes = tuple(f"172.16.{n}.0/24" for n in range(60))  # a TXT of about 1,100 octets
    zone.put(
        PeerEntry(bytes(32), "peer0", "10.77.0.2", ("10.77.0.2/32", *routes), ("192.0.2.1", 5))
    )
    for index in range(1, 9):  # 9 instances: their PTRs need about 640 octets
        zone.put(PeerEntry(bytes([index]) * 32, f"peer{index}", "10.77.0.9", (), ("192.0.2.1", 5)))
    slow = Authority(zone, answer_cache=0, fast_path=False)
    instance = instance_name(bytes(32), ORIGIN).to_text()
    asked = [(instance, "TXT"), (instance, "SRV"), ("_wireguard._udp.mesh.example.", "PTR")]
    for name, rdtype in asked:
        for edns in (False, True):
            query = dns.message.make_query(name, rdtype, use_edns=edns).to_wire()
            answer = fast_path(zone).answer(query)
            assert answer.truncated == (rdtype != "SRV" and not edns)  # SRV drops additional data
            answered_alike(answer.wire, slow.answer_udp(query, CLIENT, 0.0) or b"")


# -- properties -----------------------------------------------------------------------------

ADDRESSES = ["198.51.100.7", "2001:db8::7"]
MESH_ADDRESSES = ["10.77.0.{}", "fd00:77::{}"]
NAMESERVERS = ["203.0.113.1", "2001:db8::53", "ns1.example.net."]


@st.composite
def zones(draw: st.DrawFn) -> tuple[Zone, list[str]]:
    """A zone of a few peers (some without endpoints, some with many routes: TXT that does not
    fit 512 octets), and names to ask: the peers', the zone's own, and others."""
    ttl = draw(st.sampled_from([0, 60, 86400]))
    nameserver = draw(st.sampled_from(NAMESERVERS))
    zone = Zone(ZoneConfig(ORIGIN, ttl, nameserver), serial=draw(st.integers(1, 2**32 - 1)))
    names = ["mesh.example.", "_wireguard._udp.mesh.example.", "_udp.mesh.example.", "."]
    names += ["_services._dns-sd._udp.mesh.example.", "ns.mesh.example.", "example.net."]
    names += ["nobody.mesh.example.", "x.peer0.mesh.example.", "x._udp.mesh.example."]
    for index in range(draw(st.integers(0, 12))):  # from 8 with endpoints, PTRs pass 512 octets
        key = draw(st.binary(min_size=32, max_size=32))
        address = draw(st.sampled_from(MESH_ADDRESSES)).format(index + 2)
        routes = tuple(
            f"172.{16 + n // 256}.{n % 256}.0/24" for n in range(draw(st.integers(0, 60)))
        )
        endpoint = draw(st.none() | st.tuples(st.sampled_from(ADDRESSES), st.integers(1, 65535)))
        zone.put(PeerEntry(key, f"peer{index}", address, (address, *routes), endpoint))
        names += [instance_name(key, ORIGIN).to_text(), f"peer{index}.mesh.example."]
    return zone, names


QTYPES = ["A", "AAAA", "TXT", "SRV", "PTR", "NS", "SOA", "CNAME", "MX", "ANY", "AXFR", "IXFR"]
QTYPES += ["TXT", "SRV", "A", "PTR"]  # what agents ask, more often


@st.composite
def queries(draw: st.DrawFn, names: list[str]) -> bytes:
    """A query as a client might write it: random ID, case, flags and EDNS; now and then an
    unusual one (another class, opcode, an option, a DO bit or version, trailing octets)."""
    name = draw(st.sampled_from(names))
    chance = draw(st.randoms(use_true_random=False))
    mixed = "".join(c.upper() if chance.random() < 0.3 else c for c in name)
    rdtype: int = dns.rdatatype.from_text(draw(st.sampled_from(QTYPES)))
    if draw(st.integers(0, 9)) == 0:
        rdtype = draw(st.integers(0, 65535))
    flags = draw(st.sampled_from([0, 0x0100, 0x0100, 0x0120, 0x0110, 0x0400, 0x0800, 0x0040]))
    qclass = draw(st.sampled_from([1] * 8 + [3, 255]))
    wire = struct.pack("!HHHHHH", draw(st.integers(0, 65535)), flags, 1, 0, 0, 0)
    wire += dns.name.from_text(mixed).to_wire(file=None) or b""
    wire += struct.pack("!HH", rdtype, qclass)
    if draw(st.booleans()):
        wire = wire[:10] + b"\x00\x01" + wire[12:] + draw(opt_records())
    return wire + draw(st.sampled_from([b""] * 9 + [b"\x00"]))


COOKIE = b"\x00\x0a"
OPTIONS = [b"", b"", COOKIE + b"\x00\x08" + bytes(8), COOKIE + b"\x00\x10" + bytes(16)]
OPTIONS += [COOKIE + b"\x00\x04" + bytes(4), b"\x00\x03\x00\x00", b"\x00\x0c\x00\x02\x00\x00"]


@st.composite
def opt_records(draw: st.DrawFn) -> bytes:
    payload = draw(st.sampled_from([0, 511, 512, 1232, 4096, 65535]) | st.integers(0, 65535))
    ttl = draw(st.sampled_from([0, 0, 0, 0x8000, 0x10000, 0x1000000]))
    options = draw(st.sampled_from(OPTIONS))
    return b"\x00" + struct.pack("!HHIH", 41, payload, ttl, len(options)) + options


def answered_alike(fast: bytes, slow: bytes) -> None:
    """The same message once parsed: header, OPT, and every section as RRsets with their
    names (in their case), TTLs and records; and the same size."""
    assert len(fast) == len(slow)
    a, b = dns.message.from_wire(fast), dns.message.from_wire(slow)
    assert (a.id, a.flags, a.rcode(), a.opcode()) == (b.id, b.flags, b.rcode(), b.opcode())
    assert (a.edns, a.payload, a.ednsflags, a.options) == (
        b.edns,
        b.payload,
        b.ednsflags,
        b.options,
    )
    for section in ("question", "answer", "authority", "additional"):
        assert described(getattr(a, section)) == described(getattr(b, section))


def described(rrsets: list[dns.rrset.RRset]) -> list[tuple[object, ...]]:
    return [
        (rrset.name.labels, rrset.rdtype, rrset.rdclass, rrset.ttl, sorted(map(str, rrset)))
        for rrset in rrsets
    ]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_the_fast_path_answers_as_dnspython_does_or_declines(data: st.DataObject) -> None:
    zone, names = data.draw(zones())
    fast, slow = Authority(zone, answer_cache=0), Authority(zone, answer_cache=0, fast_path=False)
    for _ in range(10):
        query = data.draw(queries(names))
        slow_answer = slow.answer_udp(query, CLIENT, 0.0)
        served = fast.answer_udp(query, CLIENT, 0.0)  # whichever path takes it, counted alike
        assert slow_answer is not None and served is not None
        answered_alike(served, slow_answer)
        try:
            fast_answer = fast_path(zone).answer(query)
        except Declined:
            event("declined")
            continue
        event(f"answered {fast_answer.rcode!r}" + (" TC" if fast_answer.truncated else ""))
        answered_alike(fast_answer.wire, slow_answer)
    assert fast.counts == slow.counts


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=600), st.randoms(use_true_random=False))
def test_no_bytes_make_the_fast_path_raise_anything_but_declined(
    data: bytes, chance: random.Random
) -> None:
    zone = one_peer_zone()
    base = dns.message.make_query("peer1.mesh.example.", "A", use_edns=chance.random() < 0.5)
    mutated = bytearray(base.to_wire())
    for _ in range(chance.randrange(4)):
        mutated[chance.randrange(len(mutated))] = chance.randrange(256)
    for wire in (data, bytes(mutated)):
        try:
            answer = fast_path(zone).answer(wire).wire
        except Declined:
            continue
        slow = Authority(zone, answer_cache=0, fast_path=False).answer_udp(wire, CLIENT, 0.0)
        assert slow is not None
        answered_alike(answer, slow)
