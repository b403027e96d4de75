"""The authoritative DNS server for the mesh zone, sans-I/O: query bytes in, answer bytes out.

`Authority` turns query bytes into answer bytes:
- authoritative answers (AA);
- NXDOMAIN and NODATA with the SOA in the authority section;
- REFUSED outside the zone (it never recurses);
- FORMERR for malformed queries, NOTIMP for other opcodes;
- EDNS0 buffer sizes honoured up to `max_udp_payload`;
- TC when an answer does not fit over UDP, and the full answer over TCP;
- AXFR over TCP, for the client networks allowed (none by default).
Names match in any case. The answer keeps the query's case, because each owner name is written
as a compression pointer to the question. UDP answers pass the response rate limiter first.
A UDP query is answered from the answer cache, else by the fast path (fastpath.py, simple
queries straight from the bytes), else by dnspython; lookup.py says what answers hold.
"""

from __future__ import annotations

import collections
import ipaddress
import itertools
import logging
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from .fastpath import FastPath
from .lookup import asks_for_instances, find
from .ratelimit import ResponseRateLimiter, Verdict
from .records import Zone, ZoneSnapshot
from .wire import Declined

logger = logging.getLogger("meshpeer.dns")

HEADER = struct.Struct("!HHHHHH")
HEADER_SIZE = HEADER.size
CLASSIC_UDP_PAYLOAD = 512  # without EDNS0 (RFC 1035)
DEFAULT_MAX_UDP_PAYLOAD = 4096
OUR_EDNS_PAYLOAD = 1232  # what we advertise (DNS flag day 2020): no IP fragmentation
TCP_MESSAGE_MAX = 65535
ANSWER_CACHE_SIZE = 16_384  # UDP answers kept, about 5 MiB at most
AXFR_CHUNK = 16_384  # bytes of records per AXFR message; the limit is 64 KiB


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Authority:
    def __init__(
        self,
        zone: Zone,
        limiter: ResponseRateLimiter | None = None,
        max_udp_payload: int = DEFAULT_MAX_UDP_PAYLOAD,
        answer_cache: int = ANSWER_CACHE_SIZE,
        axfr_allow: tuple[IPNetwork, ...] = (),
        fast_path: bool = True,
    ) -> None:
        self.zone = zone
        self.axfr_allow = axfr_allow  # who may transfer the zone; nobody by default
        self.answer_cache = answer_cache
        self.limiter = limiter
        self.max_udp_payload = max(CLASSIC_UDP_PAYLOAD, min(max_udp_payload, TCP_MESSAGE_MAX))
        self.counts: collections.Counter[str] = collections.Counter()
        self.cache_hits = 0
        self.fast_answers = 0  # UDP answers written by the fast path
        self._fast_path = (
            FastPath(zone, self.max_udp_payload, OUR_EDNS_PAYLOAD) if fast_path else None
        )
        self._cache: dict[bytes, _Cached] = {}
        self._by_name: dict[dns.name.Name, set[bytes]] = {}  # owner name -> cache keys
        self._volatile: set[bytes] = set()  # answers that carry the SOA: every change ends them
        self._cache_serial = zone.serial
        self._transfer_cache: tuple[tuple[int, str], list[bytes]] | None = None

    # -- the two transports -------------------------------------------------------------------

    def answer_udp(self, wire: bytes, client: str, now: float) -> bytes | None:
        """The answer to one UDP query, or None to stay silent."""
        if not _is_query(wire):
            self.counts["dropped"] += 1
            return None
        verdict = Verdict.SEND if self.limiter is None else self.limiter.check(client, now)
        if verdict is Verdict.DROP:
            self.counts["rate_limited"] += 1
            return None
        if verdict is Verdict.SEND:
            cached = self._cached(wire) or self._fast(wire)
            if cached is not None:
                return cached
        query = self._parse(wire)
        if isinstance(query, bytes):
            return query
        if verdict is Verdict.SLIP:
            self.counts["slipped"] += 1
            return self._truncated(query)
        answer = self._answer(query, _udp_limit(query, self.max_udp_payload), tcp=False)
        self._remember(wire, query.question[0].name if query.question else None, answer)
        return answer

    def _fast(self, wire: bytes) -> bytes | None:
        """The fast path's answer, counted and cached alike; None if it leaves it to dnspython."""
        if self._fast_path is None:
            return None
        try:
            found = self._fast_path.answer(wire)
        except Declined:
            return None
        self.fast_answers += 1
        self.counts[found.outcome] += 1
        if found.truncated:
            self.counts["truncated"] += 1
        self._remember(wire, found.qname, found.wire)
        return found.wire

    # -- the answer cache ---------------------------------------------------------------------
    # Parsing and rendering with dnspython costs about 200 us a query; most queries repeat. An
    # answer depends only on the query's bytes after its ID (flags, question in its exact case,
    # EDNS size) and on the records of its owner name. So a repeated query gets the stored
    # answer with its own ID put in. A zone change forgets the answers for the names it changed
    # (the zone says which), and those that carry the SOA, whose serial moved: an endpoint that
    # moves every second no longer empties the whole cache.

    def _current_cache(self) -> dict[bytes, _Cached]:
        """The cache, with what the zone changed since it was filled taken out."""
        if self._cache_serial != self.zone.serial:
            changed = self.zone.changed_since(self._cache_serial)
            if changed is None:
                self._forget_all()
            else:
                self._forget(changed)
            self._cache_serial = self.zone.serial
        return self._cache

    def _forget(self, names: set[dns.name.Name]) -> None:
        stale = set(self._volatile)
        for name in names:
            stale.update(self._by_name.pop(name, ()))
        for key in stale:
            self._drop(key)

    def _forget_all(self) -> None:
        self._cache.clear()
        self._by_name.clear()
        self._volatile.clear()

    def _drop(self, key: bytes) -> None:
        cached = self._cache.pop(key, None)
        if cached is None:
            return
        self._volatile.discard(key)
        keys = self._by_name.get(cached.name)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_name[cached.name]

    def _cached(self, wire: bytes) -> bytes | None:
        hit = self._current_cache().get(wire[2:])
        if hit is None:
            return None
        for outcome in hit.outcomes:
            self.counts[outcome] += 1
        self.cache_hits += 1
        return wire[:2] + hit.answer

    def _remember(self, wire: bytes, qname: dns.name.Name | None, answer: bytes) -> None:
        cache = self._current_cache()
        if self.answer_cache <= 0:
            return
        if len(cache) >= self.answer_cache:
            self._drop(next(iter(cache)))  # the oldest: insertion order
        flags, authority = HEADER.unpack_from(answer)[1], HEADER.unpack_from(answer)[4]
        outcomes: tuple[str, ...] = (dns.rcode.to_text(dns.rcode.from_flags(flags, 0)),)
        if flags & dns.flags.TC:
            outcomes += ("truncated",)
        name = qname or dns.name.root
        key = wire[2:]
        cache[key] = _Cached(answer[2:], outcomes, name)
        self._by_name.setdefault(name, set()).add(key)
        if authority or name == self.zone.origin:
            self._volatile.add(key)

    def answer_tcp(self, wire: bytes, client: str = "") -> list[bytes] | Transfer:
        """The answers to one TCP query; none to stay silent. A zone transfer comes back as a
        `Transfer` to render (render_transfer, in a thread: seconds at 50,000 peers) unless
        this serial's is kept already."""
        if not _is_query(wire):
            self.counts["dropped"] += 1
            return []
        query = self._parse(wire)
        if isinstance(query, bytes):
            return [query]
        question = query.question[0] if len(query.question) == 1 else None
        if question is not None and question.rdtype == dns.rdatatype.AXFR and self._ours(query):
            if self._may_transfer(client):
                self.counts["AXFR"] += 1
                return self._transfer(query)
            self.counts["AXFR refused"] += 1
        return [self._answer(query, TCP_MESSAGE_MAX, tcp=True)]

    def _transfer(self, query: dns.message.Message) -> Transfer:
        key = (self.zone.serial, query.question[0].to_text())
        cached = self._transfer_cache
        if cached is not None and cached[0] == key:
            return Transfer(key, query, None, cached[1])
        return Transfer(key, query, self.zone.snapshot(), None)

    def kept_transfer(self, transfer: Transfer) -> Transfer:
        """The transfer again, rendered if one for its serial and question was kept since."""
        cached = self._transfer_cache
        if transfer.rendered is None and cached is not None and cached[0] == transfer.key:
            return Transfer(transfer.key, transfer.query, None, cached[1])
        return transfer

    def remember_transfer(self, transfer: Transfer, messages: list[bytes]) -> None:
        """Keep a rendered transfer for its serial and question: a second costs nothing."""
        self._transfer_cache = (transfer.key, [message[2:] for message in messages])

    def _may_transfer(self, client: str) -> bool:
        try:
            address = ipaddress.ip_address(client)
        except ValueError:
            return False
        address = getattr(address, "ipv4_mapped", None) or address
        return any(address in network for network in self.axfr_allow)

    # -- parsing ------------------------------------------------------------------------------

    def _parse(self, wire: bytes) -> dns.message.Message | bytes:
        """The query, or the FORMERR to send when it cannot be read."""
        try:
            return dns.message.from_wire(wire)
        except Exception:  # hostile bytes: whatever dnspython raises, the answer is FORMERR
            self.counts["FORMERR"] += 1
            return _header_only_error(wire, dns.rcode.FORMERR)

    # -- answering ----------------------------------------------------------------------------

    def _answer(self, query: dns.message.Message, limit: int, *, tcp: bool) -> bytes:
        response = dns.message.make_response(query, our_payload=OUR_EDNS_PAYLOAD)
        response.flags &= ~dns.flags.RA  # no recursion here, whatever the query asked
        rcode = self._fill(query, response, limit, tcp=tcp)
        response.set_rcode(rcode)
        self.counts[dns.rcode.to_text(rcode)] += 1
        try:
            wire = response.to_wire(max_size=limit, prefer_truncation=True)
        except dns.exception.TooBig:  # padding past the limit: RFC 7830 4 says do not pad then
            response.pad = 0
            wire = response.to_wire(max_size=limit, prefer_truncation=True)
        if HEADER.unpack_from(wire)[1] & dns.flags.TC:
            self.counts["truncated"] += 1
        return wire

    def _fill(
        self, query: dns.message.Message, response: dns.message.Message, limit: int, *, tcp: bool
    ) -> dns.rcode.Rcode:
        if query.opcode() != dns.opcode.QUERY:
            return dns.rcode.NOTIMP
        if len(query.question) != 1:
            return dns.rcode.FORMERR
        if query.edns > 0:
            return dns.rcode.BADVERS
        question = query.question[0]
        qtype = question.rdtype
        if qtype in (dns.rdatatype.IXFR, dns.rdatatype.AXFR):
            return dns.rcode.NOTIMP if qtype == dns.rdatatype.IXFR else dns.rcode.REFUSED
        if dns.rdatatype.is_metatype(qtype) and qtype != dns.rdatatype.ANY:
            return dns.rcode.FORMERR
        if not self._ours(query):
            return dns.rcode.REFUSED
        response.flags |= dns.flags.AA
        return self._lookup(question.name, qtype, response, limit, tcp=tcp)

    def _ours(self, query: dns.message.Message) -> bool:
        question = query.question[0]
        return bool(
            question.rdclass in (dns.rdataclass.IN, dns.rdataclass.ANY)
            and question.name.is_subdomain(self.zone.origin)
        )

    def _lookup(
        self,
        qname: dns.name.Name,
        qtype: dns.rdatatype.RdataType,
        response: dns.message.Message,
        limit: int,
        *,
        tcp: bool,
    ) -> dns.rcode.Rcode:
        if asks_for_instances(self.zone, qname, qtype):
            self._answer_ptrs(qname, response, limit, tcp=tcp)
            return dns.rcode.NOERROR
        found = find(self.zone, qname, qtype)
        response.answer.extend(found.answer)
        response.authority.extend(found.authority)
        response.additional.extend(found.additional)
        return found.rcode

    def _answer_ptrs(
        self, qname: dns.name.Name, response: dns.message.Message, limit: int, *, tcp: bool
    ) -> None:
        """The PTR set, sized without rendering all of it: it may hold 100,000 instances."""
        zone = self.zone
        pad, response.pad = response.pad, 0  # padding (RFC 8467) would hide a record's size
        base = len(response.to_wire(max_size=limit))
        response.answer.append(zone.ptr_rrset(qname, 1))
        per_record = len(response.to_wire(max_size=TCP_MESSAGE_MAX)) - base
        response.answer.clear()
        response.pad = pad
        fits = max(0, (limit - base) // per_record)
        if zone.ptr_count <= fits:
            response.answer.append(zone.ptr_rrset(qname))
        elif tcp:
            # No DNS message holds more than 64 KiB: as many as fit, marked incomplete (AXFR
            # has them all).
            response.answer.append(zone.ptr_rrset(qname, fits))
            response.flags |= dns.flags.TC
        else:
            response.flags |= dns.flags.TC  # an empty truncated answer: ask again over TCP

    def _truncated(self, query: dns.message.Message) -> bytes:
        response = dns.message.make_response(query, our_payload=OUR_EDNS_PAYLOAD)
        response.flags |= dns.flags.TC
        return response.to_wire(max_size=CLASSIC_UDP_PAYLOAD, prefer_truncation=True)


@dataclass(frozen=True, slots=True)
class Transfer:
    """A zone transfer (AXFR, RFC 5936) to send: rendered already, or to render from `zone`."""

    key: tuple[int, str]  # the serial and the question as asked
    query: dns.message.Message
    zone: ZoneSnapshot | None
    rendered: list[bytes] | None  # without their message ID

    def messages(self) -> list[bytes]:
        """The messages with the query's ID; renders them first if need be (any thread)."""
        if self.rendered is not None:
            return [self.query.id.to_bytes(2, "big") + message for message in self.rendered]
        if self.zone is None:
            return []
        return list(render_transfer(self.query, self.zone))


def render_transfer(query: dns.message.Message, zone: ZoneSnapshot) -> Iterator[bytes]:
    """The SOA, every RRset, the SOA again, in messages of a few KiB."""
    message, size = _transfer_message(query, first=True), 0
    for rrset in itertools.chain(zone.rrsets(), [zone.soa]):
        # Text is longer than wire format for these records: a safe measure of the size.
        cost = len(rrset.to_text())
        if message.answer and size + cost > AXFR_CHUNK:
            yield message.to_wire(max_size=TCP_MESSAGE_MAX)
            message, size = _transfer_message(query, first=False), 0
        message.answer.append(rrset)
        size += cost
    yield message.to_wire(max_size=TCP_MESSAGE_MAX)


def _transfer_message(query: dns.message.Message, *, first: bool) -> dns.message.Message:
    message = dns.message.Message(id=query.id)
    message.flags = dns.flags.QR | dns.flags.AA
    if first:
        message.question = list(query.question)
    return message


@dataclass(frozen=True, slots=True)
class _Cached:
    answer: bytes  # without its ID
    outcomes: tuple[str, ...]  # counted again at every hit
    name: dns.name.Name  # the question's: what a change of the zone must make us forget


def _is_query(wire: bytes) -> bool:
    """Long enough for a header, and not itself a response (answering those makes loops)."""
    return len(wire) >= HEADER_SIZE and not HEADER.unpack_from(wire)[1] & dns.flags.QR


def _udp_limit(query: dns.message.Message, max_udp_payload: int) -> int:
    if query.edns < 0:
        return CLASSIC_UDP_PAYLOAD
    return max(CLASSIC_UDP_PAYLOAD, min(query.payload, max_udp_payload))


def _header_only_error(wire: bytes, rcode: dns.rcode.Rcode) -> bytes:
    """An answer for a query we could not parse: its ID and opcode, no sections."""
    query_id, flags = struct.unpack_from("!HH", wire)
    kept = flags & (0x7800 | dns.flags.RD)  # the opcode bits and RD
    return HEADER.pack(query_id, dns.flags.QR | kept | int(rcode), 0, 0, 0, 0)
