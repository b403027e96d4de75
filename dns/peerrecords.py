"""The records of one peer, built from its fields (records.py assembles the zone from them).

`<name>.<zone>` has the mesh address; the instance name has SRV (the observed port), A or
AAAA (the observed address) and TXT: wgsd's keys, then ours (shared/reference/
wireguard-protocol.md, "DNS-SD layout of wgsd").
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from dns.rdtypes.ANY.PTR import PTR
from dns.rdtypes.ANY.TXT import TXT
from dns.rdtypes.IN.A import A
from dns.rdtypes.IN.AAAA import AAAA
from dns.rdtypes.IN.SRV import SRV

from meshpeer.common.endpoints import Endpoint
from meshpeer.common.keys import encode_key

from .naming import instance_label

IN = dns.rdataclass.IN
TXT_VERSION = "txtvers=1"
MAX_TXT_STRING = 255

Node = dict[dns.rdatatype.RdataType, dns.rrset.RRset]


@dataclass(frozen=True, slots=True)
class PeerEntry:
    """What the zone publishes of one registered peer."""

    public_key: bytes
    name: str
    address: str  # its mesh address
    allowed: tuple[str, ...]  # CIDRs: the mesh address as a host route, then advertised routes
    endpoint: Endpoint | None  # as the rendezvous observed it; None: not published yet


def txt_strings(entry: PeerEntry) -> list[str]:
    """wgsd's three keys first, then ours; `allowed=` repeats when 255 bytes cannot hold it."""
    strings = [TXT_VERSION, "pub=" + encode_key(entry.public_key)]
    strings.extend("allowed=" + ",".join(chunk) for chunk in _allowed_chunks(entry.allowed))
    strings += [f"name={entry.name}", f"address={entry.address}"]
    return strings


def _allowed_chunks(allowed: Sequence[str]) -> Iterator[list[str]]:
    chunk: list[str] = []
    for cidr in allowed:
        if chunk and len("allowed=" + ",".join([*chunk, cidr])) > MAX_TXT_STRING:
            yield chunk
            chunk = []
        chunk.append(cidr)
    yield chunk


def label_bytes(public_key: bytes) -> bytes:
    return instance_label(public_key).encode()


def mesh_node(name: dns.name.Name, entry: PeerEntry, ttl: int) -> Node:
    return {address_type(entry.address): address_rrset(name, entry.address, ttl)}


def instance_node(name: dns.name.Name, entry: PeerEntry, endpoint: Endpoint, ttl: int) -> Node:
    host, port = endpoint
    return {
        dns.rdatatype.SRV: rrset_of(name, ttl, [srv_rdata(port, name)]),
        address_type(host): address_rrset(name, host, ttl),
        dns.rdatatype.TXT: rrset_of(name, ttl, [txt_rdata(txt_strings(entry))]),
    }


def address_type(address: str) -> dns.rdatatype.RdataType:
    return dns.rdatatype.AAAA if ":" in address else dns.rdatatype.A


def rrset_of(name: dns.name.Name, ttl: int, rdatas: Iterable[dns.rdata.Rdata]) -> dns.rrset.RRset:
    rdatas = list(rdatas)
    rrset = dns.rrset.RRset(name, IN, rdatas[0].rdtype)
    for rdata in rdatas:
        rrset.add(rdata, ttl)
    return rrset


def address_rrset(name: dns.name.Name, address: str, ttl: int) -> dns.rrset.RRset:
    return rrset_of(name, ttl, [address_rdata(address)])


def address_rdata(address: str) -> dns.rdata.Rdata:
    if ":" in address:
        return AAAA(IN, dns.rdatatype.AAAA, address)  # type: ignore[no-untyped-call]
    return A(IN, dns.rdatatype.A, address)  # type: ignore[no-untyped-call]


# The per-peer records are built from their fields: parsing zone-file text costs 10 times more,
# and 100,000 peers are loaded at every start. (dnspython's constructors carry no annotations.)
def srv_rdata(port: int, target: dns.name.Name) -> dns.rdata.Rdata:
    return SRV(IN, dns.rdatatype.SRV, 0, 0, port, target)  # type: ignore[no-untyped-call]


def ptr_rdata(target: dns.name.Name) -> dns.rdata.Rdata:
    return PTR(IN, dns.rdatatype.PTR, target)  # type: ignore[no-untyped-call]


def txt_rdata(strings: list[str]) -> dns.rdata.Rdata:
    return TXT(IN, dns.rdatatype.TXT, strings)
