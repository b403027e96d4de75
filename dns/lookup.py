"""Which records answer a question in the mesh zone: one place for both of the server's paths.

The zone has no delegations below its apex and no aliases, so RFC 1034 4.3.2 comes down to: the
owner's RRset of the asked type (every RRset for ANY) with, for SRV, the target's address and
TXT as wgsd sends them (RFC 2782 "Usage rules") and, for NS, the glue; else NODATA when the
name exists (RFC 8020: an empty non-terminal exists too) or NXDOMAIN, with the SOA in the
authority section for negative caching (RFC 2308 3). The dnspython path (server.py) and the
fast path (fastpath.py) both ask here, so they cannot disagree on what an answer holds; only
the service's PTR set, which may hold 100,000 instances, is sized by each path itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset

from .records import Zone, name_key

_ADDRESSES = (dns.rdatatype.A, dns.rdatatype.AAAA)
_ADDITIONAL = {
    dns.rdatatype.SRV: (*_ADDRESSES, dns.rdatatype.TXT),
    dns.rdatatype.NS: _ADDRESSES,
}


@dataclass(frozen=True, slots=True)
class Found:
    rcode: dns.rcode.Rcode
    answer: list[dns.rrset.RRset] = field(default_factory=list)
    authority: list[dns.rrset.RRset] = field(default_factory=list)
    additional: list[dns.rrset.RRset] = field(default_factory=list)


def asks_for_instances(zone: Zone, qname: dns.name.Name, qtype: int) -> bool:
    """Whether the answer is the service's PTR set (DNS-SD browsing, RFC 6763 4.1)."""
    wanted = qtype in (dns.rdatatype.PTR, dns.rdatatype.ANY)
    return wanted and zone.ptr_count > 0 and qname == zone.service


def find(zone: Zone, qname: dns.name.Name, qtype: int) -> Found:
    """The records for any question but the service's PTR set (see asks_for_instances)."""
    node = zone.node(qname) or {}
    if qtype == dns.rdatatype.ANY:
        answer = list(node.values())
    else:
        rrset = node.get(dns.rdatatype.RdataType(qtype))
        answer = [rrset] if rrset is not None else []
    if answer:
        return Found(dns.rcode.NOERROR, answer, [], list(_additional(zone, answer)))
    soa = zone.soa
    rcode = dns.rcode.NOERROR if zone.exists(qname) else dns.rcode.NXDOMAIN
    return Found(rcode, [], [soa], [])


def _additional(zone: Zone, answer: list[dns.rrset.RRset]) -> Iterator[dns.rrset.RRset]:
    # Keyed by lower-case labels: hashing dns.name.Name objects costs more than the rest.
    sent = {(name_key(rrset.name), rrset.rdtype) for rrset in answer}
    for rrset in answer:
        wanted = _ADDITIONAL.get(rrset.rdtype, ())
        for rdata in rrset if wanted else ():
            extra = zone.node(rdata.target) or {}
            target = name_key(rdata.target)
            for rdtype in wanted:
                if rdtype in extra and (target, rdtype) not in sent:
                    sent.add((target, rdtype))
                    yield extra[rdtype]
