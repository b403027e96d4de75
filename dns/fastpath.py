"""The server's uncached UDP path for common queries, without dnspython per message.

`FastPath.answer` reads a simple query with wire.py, asks lookup.py which RRsets answer it
(the same place the dnspython path asks), and writes each RRset from pieces kept per RRset:
owner labels, type/class/TTL, and rdata bytes (RFC 1035 3.2.1, 4.1.3). The pieces are made
when an RRset is first written and kept in a bounded memo keyed by the RRset itself; the zone
builds new RRsets when it changes, so a kept piece is never stale, and the old ones age out.
A query it does not answer raises `Declined`, and the caller answers it with dnspython: other
opcodes, EDNS flags and options, AXFR, ANY, other classes, names outside the zone, and
records of other types than the zone holds.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import dns.name
import dns.rcode
import dns.rdata
import dns.rdatatype
import dns.rrset
from dns.rdtypes.ANY.SOA import SOA
from dns.rdtypes.nsbase import NSBase

from .lookup import asks_for_instances, find
from .records import Zone
from .wire import (
    AA,
    ADDITIONAL,
    ANSWER,
    AUTHORITY,
    AnswerWriter,
    Declined,
    RdataWire,
    RRsetWire,
    SimpleQuery,
    WireName,
    parse_query,
)

CLASSIC_UDP_PAYLOAD = 512  # without EDNS (RFC 1035 4.2.1)
MEMO_SIZE = 16_384  # RRsets kept as pieces: a few per busy peer, as the zone keeps 8,192 nodes
_SOA_NUMBERS = struct.Struct("!IIIII")  # serial, refresh, retry, expire, minimum
# Rdata that holds no name to compress: its bytes are the same in every answer.
_NO_NAMES = frozenset({dns.rdatatype.A, dns.rdatatype.AAAA, dns.rdatatype.TXT, dns.rdatatype.SRV})
_ONE_NAME = frozenset({dns.rdatatype.PTR, dns.rdatatype.NS, dns.rdatatype.CNAME})
_RCODE_NAMES = {rcode: dns.rcode.to_text(rcode) for rcode in dns.rcode.Rcode}  # 1 us each else


@dataclass(frozen=True, slots=True)
class FastAnswer:
    wire: bytes
    rcode: dns.rcode.Rcode
    outcome: str  # the rcode's name, as the server counts it
    truncated: bool
    qname: dns.name.Name  # as asked: what the answer cache files it under


class FastPath:
    def __init__(self, zone: Zone, max_udp_payload: int, our_payload: int) -> None:
        self.zone = zone
        self.max_udp_payload = max_udp_payload
        self.our_payload = our_payload  # what the answer's OPT advertises
        self._memo: dict[int, tuple[dns.rrset.RRset, RRsetWire]] = {}

    def answer(self, wire: bytes) -> FastAnswer:
        """The UDP answer to `wire`; `Declined` for a query left to dnspython."""
        query = parse_query(wire)
        if query.qtype == dns.rdatatype.ANY:
            raise Declined("ANY")  # rare, and its answer holds every type
        qname = dns.name.Name((*query.labels, b""))
        if not qname.is_subdomain(self.zone.origin):
            raise Declined("outside the zone")  # REFUSED, by the dnspython path
        writer = AnswerWriter(query, self._udp_limit(query))
        if asks_for_instances(self.zone, qname, query.qtype):
            rcode = self._instances(qname, writer)
        else:
            rcode = self._records(qname, query.qtype, writer)
        answer = writer.finish(AA, rcode, self.our_payload)
        return FastAnswer(answer, rcode, _RCODE_NAMES[rcode], writer.truncated, qname)

    def _udp_limit(self, query: SimpleQuery) -> int:
        """RFC 6891 6.2.5: 512 without EDNS; the client's size, capped by ours, with it."""
        if query.edns_payload is None:
            return CLASSIC_UDP_PAYLOAD
        return max(CLASSIC_UDP_PAYLOAD, min(query.edns_payload, self.max_udp_payload))

    def _records(self, qname: dns.name.Name, qtype: int, writer: AnswerWriter) -> dns.rcode.Rcode:
        found = find(self.zone, qname, qtype)
        for section, rrsets in (
            (ANSWER, found.answer),
            (AUTHORITY, found.authority),
            (ADDITIONAL, found.additional),
        ):
            for rrset in rrsets:
                writer.add(section, self._pieces(rrset))
        return found.rcode

    def _instances(self, qname: dns.name.Name, writer: AnswerWriter) -> dns.rcode.Rcode:
        """The whole PTR set if it fits, else an empty answer with TC: the client asks again
        over TCP (the dnspython path sizes it the same way)."""
        zone = self.zone
        per_record = writer.cost(rrset_wire(zone.ptr_rrset(qname, 1)))
        if zone.ptr_count <= writer.space // per_record:
            writer.add(ANSWER, rrset_wire(zone.ptr_rrset(qname)))
        else:
            writer.truncated = True
        return dns.rcode.NOERROR

    def _pieces(self, rrset: dns.rrset.RRset) -> RRsetWire:
        """The RRset's pieces, from the memo when this very RRset was written before."""
        kept = self._memo.get(id(rrset))
        if kept is not None and kept[0] is rrset:  # the memo holds it, so its id is not reused
            return kept[1]
        pieces = rrset_wire(rrset)
        if len(self._memo) >= MEMO_SIZE:
            del self._memo[next(iter(self._memo))]  # the oldest first
        self._memo[id(rrset)] = (rrset, pieces)
        return pieces


def rrset_wire(rrset: dns.rrset.RRset) -> RRsetWire:
    """An RRset as pieces to write; `Declined` for a type this path does not write."""
    head = struct.pack("!HHI", rrset.rdtype, rrset.rdclass, rrset.ttl)
    rdatas = tuple(_rdata_wire(rdata) for rdata in rrset)
    return RRsetWire.of(wire_name(rrset.name), head, rdatas)


def wire_name(name: dns.name.Name) -> WireName:
    if not name.is_absolute():
        raise Declined("a relative name")
    return WireName.of(name.labels[:-1])


def _rdata_wire(rdata: dns.rdata.Rdata) -> RdataWire:
    if rdata.rdtype in _NO_NAMES:
        data = rdata.to_wire() or b""
        return struct.pack("!H", len(data)) + data
    if rdata.rdtype in _ONE_NAME and isinstance(rdata, NSBase):
        return (wire_name(rdata.target),)  # compressed, as RFC 1035 4.1.4 allows for these
    if isinstance(rdata, SOA):
        numbers = (rdata.serial, rdata.refresh, rdata.retry, rdata.expire, rdata.minimum)
        return (wire_name(rdata.mname), wire_name(rdata.rname), _SOA_NUMBERS.pack(*numbers))
    raise Declined("a record type without pieces")
