"""The DNS-SD zone as a pure function of the registry (instances.py reads it back).

Per peer with an observed endpoint (wgsd's layout, shared/reference/wireguard-protocol.md):
    _wireguard._udp.<zone>              PTR  <label>._wireguard._udp.<zone>
    <label>._wireguard._udp.<zone>      SRV  0 0 <observed port> <label>._wireguard._udp.<zone>
                                        A or AAAA  <observed address>
                                        TXT  "txtvers=1" "pub=<key>" "allowed=<cidrs>"
                                             "name=<name>" "address=<mesh address>"
and per registered peer, endpoint or not, `<name>.<zone>` A or AAAA <mesh address>.
The zone apex has SOA and NS (`ns.<zone>`, with the rendezvous's public address as glue),
and `_services._dns-sd._udp.<zone>` enumerates the service type (RFC 6763 section 9). The
rendezvous's mesh address is not published: it has no interface on the mesh to answer there.

`Zone` keeps every record in a dictionary by owner name, changed per peer as the registry
changes: a query is a lookup, never a scan, whatever the number of peers.
"""

from __future__ import annotations

import collections
import ipaddress
import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from meshpeer.common.endpoints import Endpoint

from .naming import (
    NAMESERVER_LABEL,
    enumeration_name,
    service_name,
)
from .peerrecords import (
    IN,
    Node,
    PeerEntry,
    address_rrset,
    instance_node,
    label_bytes,
    mesh_node,
    ptr_rdata,
    rrset_of,
)

SOA_REFRESH_S, SOA_RETRY_S, SOA_EXPIRE_S = 3600, 600, 86400
BUILT_NODES = 8192  # peers' record sets kept built; others are rebuilt when asked for
CHANGES_KEPT = 4096  # serials whose changed names are remembered (answer caches catch up)

NameKey = tuple[bytes, ...]

__all__ = ["PeerEntry", "Zone", "ZoneConfig", "ZoneSnapshot"]


@dataclass(frozen=True, slots=True)
class ZoneConfig:
    origin: dns.name.Name
    ttl: int
    nameserver: str  # the rendezvous's public address (glue), or a host name outside the zone


class Zone:
    def __init__(self, config: ZoneConfig, serial: int = 1) -> None:
        self.config = config
        self.origin = config.origin
        self.service = service_name(config.origin)
        self.serial = serial
        self._soa_serial = serial
        # Which owner names each serial changed, so a cache of answers forgets only those.
        self._changes: collections.deque[tuple[int, tuple[dns.name.Name, ...]]] = collections.deque(
            maxlen=CHANGES_KEPT
        )
        # Keyed by lower-case labels, not by dns.name.Name: hashing a Name walks every
        # character in Python (6 us for an instance name), several times a query.
        self._fixed: dict[NameKey, Node] = {}  # the apex, ns, rendezvous, enumeration
        self._origin_key = name_key(config.origin)
        self._service_key = name_key(self.service)
        self._entries: dict[bytes, PeerEntry] = {}
        # Peers are found by their lower-case label; their records are built when first asked
        # for (a bounded cache keeps the busy ones), so loading 100,000 peers stays cheap.
        self._by_instance: dict[bytes, bytes] = {}  # instance label -> key; in PTR order
        self._by_name: dict[bytes, bytes] = {}  # mesh name label -> key
        self._built: collections.OrderedDict[tuple[bool, bytes], Node] = collections.OrderedDict()
        # Names that exist without records of their own (RFC 8020: NODATA, not NXDOMAIN).
        self._structural = {
            name_key(config.origin),
            name_key(self.service),
            name_key(self.service.parent()),
            name_key(enumeration_name(config.origin)),
            name_key(enumeration_name(config.origin).parent()),
        }
        self._build_fixed()

    # -- reading ------------------------------------------------------------------------------

    def node(self, name: dns.name.Name) -> Node | None:
        key = name_key(name)
        if key == self._origin_key:
            self._refresh_soa()
        fixed = self._fixed.get(key)
        if fixed is not None:
            return fixed
        found = self._peer_of(key, name)
        return self._peer_node(*found) if found else None

    def exists(self, name: dns.name.Name) -> bool:
        key = name_key(name)
        return key in self._fixed or key in self._structural or self._peer_of(key, name) is not None

    @property
    def soa(self) -> dns.rrset.RRset:
        self._refresh_soa()
        return self._fixed[self._origin_key][dns.rdatatype.SOA]

    @property
    def ptr_count(self) -> int:
        return len(self._by_instance)

    def ptr_rrset(self, owner: dns.name.Name, limit: int | None = None) -> dns.rrset.RRset:
        """The service PTR set (the first `limit` instances), owned by `owner` as asked."""
        rrset = dns.rrset.RRset(owner, IN, dns.rdatatype.PTR)
        for label in itertools.islice(self._by_instance, limit):
            rrset.add(ptr_rdata(self._instance(label)), self.config.ttl)
        return rrset

    def entry(self, public_key: bytes) -> PeerEntry | None:
        return self._entries.get(public_key)

    def transfer(self) -> Iterator[dns.rrset.RRset]:
        """Every RRset for AXFR, SOA first (the caller repeats it last); PTRs one by one."""
        return self.snapshot().rrsets()

    def snapshot(self) -> ZoneSnapshot:
        """The zone as it is now, cheaply: what a transfer is rendered from, in any thread."""
        soa = self.soa
        fixed = [rrset for node in self._fixed.values() for rrset in node.values()]
        return ZoneSnapshot(
            self.serial,
            soa,
            tuple(rrset for rrset in fixed if rrset is not soa),
            tuple(self._entries.items()),
            self.origin,
            self.service,
            self.config.ttl,
        )

    # -- changing -----------------------------------------------------------------------------

    def put(self, entry: PeerEntry) -> None:
        """Publish a peer, replacing what was published for its key."""
        old = self._entries.get(entry.public_key)
        if old == entry:
            return
        instances = len(self._by_instance)
        if old is not None:
            self._unpublish(old, keep_ptr=entry.endpoint is not None)
        self._entries[entry.public_key] = entry
        self._by_name[entry.name.encode()] = entry.public_key
        if entry.endpoint is not None:
            self._by_instance.setdefault(label_bytes(entry.public_key), entry.public_key)
        changed = [self._mesh_name(entry.name), self._instance(label_bytes(entry.public_key))]
        if old is not None and old.name != entry.name:
            changed.append(self._mesh_name(old.name))
        if len(self._by_instance) != instances:
            changed.append(self.service)  # the PTR set grew or shrank
        self._bump(changed)

    def remove(self, public_key: bytes) -> None:
        old = self._entries.pop(public_key, None)
        if old is not None:
            self._unpublish(old, keep_ptr=False)
            self._bump(
                [
                    self._mesh_name(old.name),
                    self._instance(label_bytes(public_key)),
                    self.service,
                ]
            )

    def changed_since(self, serial: int) -> set[dns.name.Name] | None:
        """The owner names changed after `serial`; None when that is too long ago to know."""
        if serial == self.serial:
            return set()
        if not self._changes or self._changes[0][0] > _next(serial):
            return None
        names: set[dns.name.Name] = set()
        for changed_at, changed in reversed(self._changes):
            if changed_at == serial:
                break
            names.update(changed)
        return names

    def _unpublish(self, entry: PeerEntry, *, keep_ptr: bool) -> None:
        if self._by_name.get(entry.name.encode()) == entry.public_key:
            del self._by_name[entry.name.encode()]
        if not keep_ptr:
            self._by_instance.pop(label_bytes(entry.public_key), None)
        self._built.pop((True, entry.public_key), None)
        self._built.pop((False, entry.public_key), None)

    def _bump(self, changed: list[dns.name.Name]) -> None:
        self.serial = _next(self.serial)
        self._changes.append((self.serial, tuple(changed)))

    # -- peers' records, built on demand ------------------------------------------------------

    def _peer_of(
        self, labels: NameKey, name: dns.name.Name
    ) -> tuple[bool, bytes, dns.name.Name] | None:
        """(is an instance, key, name) for a peer's name, by a dictionary lookup."""
        if labels[1:] == self._service_key:
            key = self._by_instance.get(labels[0])
            return (True, key, name) if key is not None else None
        if labels[1:] == self._origin_key:
            key = self._by_name.get(labels[0])
            return (False, key, name) if key is not None else None
        return None

    def _peer_node(self, is_instance: bool, key: bytes, name: dns.name.Name) -> Node:
        cached = self._built.get((is_instance, key))
        if cached is not None:
            self._built.move_to_end((is_instance, key))
            return cached
        entry, ttl = self._entries[key], self.config.ttl
        canonical = name.canonicalize()
        if is_instance and entry.endpoint is not None:
            node = instance_node(canonical, entry, entry.endpoint, ttl)
        else:
            node = mesh_node(canonical, entry, ttl)
        self._built[(is_instance, key)] = node
        if len(self._built) > BUILT_NODES:
            self._built.popitem(last=False)
        return node

    def _instance(self, label: bytes) -> dns.name.Name:
        return dns.name.Name((label,)).concatenate(self.service)

    def _mesh_name(self, peer_name: str) -> dns.name.Name:
        return dns.name.Name((peer_name,)).concatenate(self.origin)

    # -- the fixed records --------------------------------------------------------------------

    def _refresh_soa(self) -> None:
        if self._soa_serial != self.serial:  # built when read, not at every change
            self._set(self._soa_rrset())
            self._soa_serial = self.serial

    def _set(self, rrset: dns.rrset.RRset) -> None:
        self._fixed.setdefault(name_key(rrset.name), {})[rrset.rdtype] = rrset

    def _build_fixed(self) -> None:
        config, ttl = self.config, self.config.ttl
        self._set(self._soa_rrset())
        nameserver = self._nameserver_name()
        ns = _rdata(dns.rdatatype.NS, nameserver.to_text())
        self._set(rrset_of(config.origin, ttl, [ns]))
        if nameserver.is_subdomain(config.origin):
            self._set(address_rrset(nameserver, config.nameserver, ttl))
        enumeration = ptr_rdata(self.service)
        self._set(rrset_of(enumeration_name(config.origin), ttl, [enumeration]))

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
        return rrset_of(origin, ttl, [soa])


@dataclass(frozen=True, slots=True)
class ZoneSnapshot:
    """A zone's records at one serial, from which its RRsets are built without touching the
    zone again (so a thread may build them while the zone changes)."""

    serial: int
    soa: dns.rrset.RRset
    fixed: tuple[dns.rrset.RRset, ...]
    entries: tuple[tuple[bytes, PeerEntry], ...]
    origin: dns.name.Name
    service: dns.name.Name
    ttl: int

    def __reduce__(self) -> tuple[object, ...]:
        # Sent to another process as plain tuples: pickling 50,000 dataclasses took 230 ms.
        entries = tuple(
            (key, e.public_key, e.name, e.address, e.allowed, e.endpoint) for key, e in self.entries
        )
        fields = (self.serial, self.soa, self.fixed, entries, self.origin, self.service, self.ttl)
        return (_unpickle_snapshot, fields)

    def rrsets(self) -> Iterator[dns.rrset.RRset]:
        """SOA first, then every RRset (the caller repeats the SOA last); PTRs one by one."""
        yield self.soa
        yield from self.fixed
        for key, entry in self.entries:
            mesh_name = dns.name.Name((entry.name,)).concatenate(self.origin)
            yield from mesh_node(mesh_name, entry, self.ttl).values()
            if entry.endpoint is not None:
                instance = dns.name.Name((label_bytes(key),)).concatenate(self.service)
                yield from instance_node(instance, entry, entry.endpoint, self.ttl).values()
                yield rrset_of(self.service, self.ttl, [ptr_rdata(instance)])


def _unpickle_snapshot(
    serial: int,
    soa: dns.rrset.RRset,
    fixed: tuple[dns.rrset.RRset, ...],
    entries: tuple[tuple[bytes, bytes, str, str, tuple[str, ...], Endpoint | None], ...],
    origin: dns.name.Name,
    service: dns.name.Name,
    ttl: int,
) -> ZoneSnapshot:
    rebuilt = tuple(
        (key, PeerEntry(public_key, name, address, allowed, endpoint))
        for key, public_key, name, address, allowed, endpoint in entries
    )
    return ZoneSnapshot(serial, soa, fixed, rebuilt, origin, service, ttl)


def name_key(name: dns.name.Name) -> NameKey:
    """The name's labels in lower case (RFC 4343: names compare without regard to case)."""
    return tuple(label.lower() for label in name.labels)


def _next(serial: int) -> int:
    return (serial + 1) % 2**32 or 1


def _rdata(rdtype: dns.rdatatype.RdataType, text: str) -> dns.rdata.Rdata:
    return dns.rdata.from_text(IN, rdtype, text)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
