"""The DNS-SD zone as a pure function of the registry, and its decoding on the agent's side.

Per peer with an observed endpoint (wgsd's layout, shared/reference/wireguard-protocol.md):
    _wireguard._udp.<zone>              PTR  <label>._wireguard._udp.<zone>
    <label>._wireguard._udp.<zone>      SRV  0 0 <observed port> <label>._wireguard._udp.<zone>
                                        A or AAAA  <observed address>
                                        TXT  "txtvers=1" "pub=<key>" "allowed=<cidrs>"
                                             "name=<name>" "address=<mesh address>"
and per registered peer, endpoint or not, `<name>.<zone>` A or AAAA <mesh address>.
The zone apex has SOA and NS (`ns.<zone>`, with the rendezvous's public address as glue),
`_services._dns-sd._udp.<zone>` enumerates the service type (RFC 6763 section 9), and
`rendezvous.<zone>` is the rendezvous's own mesh address.

`Zone` keeps every record in a dictionary by owner name, changed per peer as the registry
changes: a query is a lookup, never a scan, whatever the number of peers.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from .naming import (
    NAMESERVER_LABEL,
    RENDEZVOUS_LABEL,
    BadLabel,
    enumeration_name,
    instance_name,
    key_from_label,
    service_name,
)

IN = dns.rdataclass.IN
TXT_VERSION = "txtvers=1"
MAX_TXT_STRING = 255
SOA_REFRESH_S, SOA_RETRY_S, SOA_EXPIRE_S = 3600, 600, 86400

Endpoint = tuple[str, int]
Node = dict[dns.rdatatype.RdataType, dns.rrset.RRset]


class BadRecord(ValueError):
    """Records that do not describe a peer the way this module writes them."""


@dataclass(frozen=True, slots=True)
class PeerEntry:
    """What the zone publishes of one registered peer."""

    public_key: bytes
    name: str
    address: str  # its mesh address
    allowed: tuple[str, ...]  # CIDRs: the mesh address as a host route, then advertised routes
    endpoint: Endpoint | None  # as the rendezvous observed it; None: not published yet


@dataclass(frozen=True, slots=True)
class ZoneConfig:
    origin: dns.name.Name
    ttl: int
    nameserver: str  # the rendezvous's public address (glue), or a host name outside the zone
    rendezvous_address: str  # its mesh address


def txt_strings(entry: PeerEntry) -> list[str]:
    """wgsd's three keys first, then ours; `allowed=` repeats when 255 bytes cannot hold it."""
    strings = [TXT_VERSION, "pub=" + base64.b64encode(entry.public_key).decode()]
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


class Zone:
    def __init__(self, config: ZoneConfig, serial: int = 1) -> None:
        self.config = config
        self.origin = config.origin
        self.service = service_name(config.origin)
        self.serial = serial
        self._nodes: dict[dns.name.Name, Node] = {}
        self._ptrs: dict[bytes, dns.rdata.Rdata] = {}  # in registration order
        self._entries: dict[bytes, PeerEntry] = {}
        # Names that exist without records of their own (RFC 8020: NODATA, not NXDOMAIN).
        self._structural = {
            config.origin,
            self.service,
            self.service.parent(),
            enumeration_name(config.origin),
            enumeration_name(config.origin).parent(),
        }
        self._build_fixed()

    # -- reading ------------------------------------------------------------------------------

    def node(self, name: dns.name.Name) -> Node | None:
        return self._nodes.get(name)

    def exists(self, name: dns.name.Name) -> bool:
        return name in self._nodes or name in self._structural

    @property
    def soa(self) -> dns.rrset.RRset:
        return self._nodes[self.origin][dns.rdatatype.SOA]

    @property
    def ptr_count(self) -> int:
        return len(self._ptrs)

    def ptr_rrset(self, owner: dns.name.Name, limit: int | None = None) -> dns.rrset.RRset:
        """The service PTR set (the first `limit` instances), owned by `owner` as asked."""
        rrset = dns.rrset.RRset(owner, IN, dns.rdatatype.PTR)
        rrset.update_ttl(self.config.ttl)
        for rdata in itertools.islice(self._ptrs.values(), limit):
            rrset.add(rdata)
        return rrset

    def entry(self, public_key: bytes) -> PeerEntry | None:
        return self._entries.get(public_key)

    def transfer(self) -> Iterator[dns.rrset.RRset]:
        """Every RRset for AXFR, SOA first (the caller repeats it last); PTRs one by one."""
        yield self.soa
        for name, node in self._nodes.items():
            for rdtype, rrset in node.items():
                if not (name == self.origin and rdtype == dns.rdatatype.SOA):
                    yield rrset
        for rdata in self._ptrs.values():
            single = dns.rrset.RRset(self.service, IN, dns.rdatatype.PTR)
            single.add(rdata, self.config.ttl)
            yield single

    # -- changing -----------------------------------------------------------------------------

    def put(self, entry: PeerEntry) -> None:
        """Publish a peer, replacing what was published for its key."""
        old = self._entries.get(entry.public_key)
        if old == entry:
            return
        if old is not None:
            self._unpublish(old, keep_ptr=entry.endpoint is not None)
        self._entries[entry.public_key] = entry
        self._publish(entry)
        self._bump()

    def remove(self, public_key: bytes) -> None:
        old = self._entries.pop(public_key, None)
        if old is not None:
            self._unpublish(old, keep_ptr=False)
            self._bump()

    def _publish(self, entry: PeerEntry) -> None:
        ttl = self.config.ttl
        self._set(_address_rrset(self._mesh_name(entry.name), entry.address, ttl))
        if entry.endpoint is None:
            return
        instance = instance_name(entry.public_key, self.origin)
        host, port = entry.endpoint
        srv = _rdata(dns.rdatatype.SRV, f"0 0 {port} {instance}")
        self._set(_rrset(instance, ttl, [srv]))
        self._set(_address_rrset(instance, host, ttl))
        txt = _rdata(dns.rdatatype.TXT, " ".join(_quoted(text) for text in txt_strings(entry)))
        self._set(_rrset(instance, ttl, [txt]))
        if entry.public_key not in self._ptrs:
            self._ptrs[entry.public_key] = _rdata(dns.rdatatype.PTR, instance.to_text())

    def _unpublish(self, entry: PeerEntry, *, keep_ptr: bool) -> None:
        self._nodes.pop(self._mesh_name(entry.name), None)
        self._nodes.pop(instance_name(entry.public_key, self.origin), None)
        if not keep_ptr:
            self._ptrs.pop(entry.public_key, None)

    def _bump(self) -> None:
        self.serial = (self.serial + 1) % 2**32 or 1
        self._set(self._soa_rrset())

    def _mesh_name(self, peer_name: str) -> dns.name.Name:
        return dns.name.Name((peer_name,)).concatenate(self.origin)

    def _set(self, rrset: dns.rrset.RRset) -> None:
        self._nodes.setdefault(rrset.name, {})[rrset.rdtype] = rrset

    def _build_fixed(self) -> None:
        config, ttl = self.config, self.config.ttl
        self._set(self._soa_rrset())
        nameserver = self._nameserver_name()
        ns = _rdata(dns.rdatatype.NS, nameserver.to_text())
        self._set(_rrset(config.origin, ttl, [ns]))
        if nameserver.is_subdomain(config.origin):
            self._set(_address_rrset(nameserver, config.nameserver, ttl))
        rendezvous = dns.name.Name((RENDEZVOUS_LABEL,)).concatenate(config.origin)
        self._set(_address_rrset(rendezvous, config.rendezvous_address, ttl))
        enumeration = _rdata(dns.rdatatype.PTR, self.service.to_text())
        self._set(_rrset(enumeration_name(config.origin), ttl, [enumeration]))

    def _nameserver_name(self) -> dns.name.Name:
        if _is_ip(self.config.nameserver):
            return dns.name.Name((NAMESERVER_LABEL,)).concatenate(self.origin)
        return dns.name.from_text(self.config.nameserver)

    def _soa_rrset(self) -> dns.rrset.RRset:
        origin, ttl = self.origin, self.config.ttl
        mailbox = dns.name.Name(("hostmaster",)).concatenate(origin)
        # The last field is the negative-caching TTL: as short as the positive one.
        soa = _rdata(
            dns.rdatatype.SOA,
            f"{self._nameserver_name()} {mailbox} {self.serial} "
            f"{SOA_REFRESH_S} {SOA_RETRY_S} {SOA_EXPIRE_S} {ttl}",
        )
        return _rrset(origin, ttl, [soa])


def _rrset(name: dns.name.Name, ttl: int, rdatas: Iterable[dns.rdata.Rdata]) -> dns.rrset.RRset:
    rdatas = list(rdatas)
    rrset = dns.rrset.RRset(name, IN, rdatas[0].rdtype)
    for rdata in rdatas:
        rrset.add(rdata, ttl)
    return rrset


def _address_rrset(name: dns.name.Name, address: str, ttl: int) -> dns.rrset.RRset:
    version = ipaddress.ip_address(address).version
    rdtype = dns.rdatatype.AAAA if version == 6 else dns.rdatatype.A
    return _rrset(name, ttl, [_rdata(rdtype, address)])


def _rdata(rdtype: dns.rdatatype.RdataType, text: str) -> dns.rdata.Rdata:
    return dns.rdata.from_text(IN, rdtype, text)


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


# -- reading it back (the agent) --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DiscoveredPeer:
    public_key: bytes
    endpoint: Endpoint
    allowed: tuple[str, ...]
    name: str | None
    address: str | None


def decode_instance(
    instance: dns.name.Name,
    port: int,
    endpoint_address: str,
    txt: Sequence[bytes],
) -> DiscoveredPeer:
    """A peer from its SRV port, A/AAAA and TXT strings; only `BadRecord` escapes.

    The key comes from the instance label and must agree with `pub=`: a TXT record cannot
    redirect one peer's endpoint to another's key."""
    if len(instance.labels) < 1:
        raise BadRecord("the instance name has no label")
    try:
        key = key_from_label(instance.labels[0])
        address = str(ipaddress.ip_address(endpoint_address))
    except (BadLabel, ValueError) as error:
        raise BadRecord(str(error)) from None
    if not 0 < port < 65536:
        raise BadRecord(f"port {port} is out of range")
    values = parse_txt(txt)
    if values.get("pub") and _b64(values["pub"]) != key:
        raise BadRecord("pub= does not match the instance label")
    allowed = tuple(cidr for cidr in values.get("allowed", "").split(",") if cidr)
    return DiscoveredPeer(key, (address, port), allowed, values.get("name"), values.get("address"))


def parse_txt(strings: Sequence[bytes]) -> dict[str, str]:
    """key=value strings (RFC 6763 section 6); repeated `allowed=` strings are joined."""
    values: dict[str, str] = {}
    for raw in strings:
        text = raw.decode("utf-8", "replace")
        key, _, value = text.partition("=")
        key = key.lower()
        if key == "allowed" and key in values:
            values[key] = ",".join(part for part in (values[key], value) if part)
        else:
            values.setdefault(key, value)  # RFC 6763 6.4: the first occurrence counts
    return values


def _b64(text: str) -> bytes | None:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
