"""A small DNS wire codec for the server's common queries, sans-I/O: bytes in, bytes out.

dnspython parses a query into objects and renders the answer from objects: about 230 us a
message, which caps an uncached server near 4,000 queries/s. Agents and people ask a few plain
questions (SRV, A, TXT, PTR of the service, names that do not exist), so this module reads
those straight from the bytes and writes the answer from pieces kept per RRset:
- `parse_query` accepts a query only when it is plainly simple (RFC 1035 4.1.1-4.1.2: one
  question, no answer or authority records, no compression in the question, class IN, a data
  type; RFC 6891 6.1.2-6.1.3: at most one OPT, version 0, no flags, no option but a well-formed
  COOKIE, RFC 7873 4). Anything else raises `Declined`, the module's only error, and the caller
  answers with dnspython, so unusual queries keep exactly their old answers.
- `AnswerWriter` lays an answer out as dnspython's renderer does: owner names compressed against
  every name written before (RFC 1035 4.1.4), RRsets whole or not at all, TC when the answer or
  authority section does not fit (RFC 2181 9), the OPT record reserved first and written last.
  Same layout, same sizes, so the same answers truncate.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

HEADER = struct.Struct("!HHHHHH")
HEADER_SIZE = HEADER.size
RECORD_FIXED = struct.Struct("!HHIH")  # type, class, TTL, RDLENGTH (RFC 1035 4.1.3)
QUESTION_FIXED = struct.Struct("!HH")
POINTER = struct.Struct("!H")
MAX_QUERY = 512  # a simple query with a cookie stays far below; bigger ones are not simple
MAX_NAME = 255  # octets on the wire, root included (RFC 1035 3.1)
MAX_LABEL = 63  # larger length octets are pointers or extended label types (RFC 1035 4.1.4)
MAX_POINTER_OFFSET = 0x3FFF
CLASS_IN = 1
TYPE_OPT = 41
OPTION_COOKIE = 10
CLIENT_COOKIE = 8
SERVER_COOKIE = range(8, 33)  # RFC 7873 4: none, or 8 to 32 octets

# Header bits (RFC 1035 4.1.1; AD and CD from RFC 4035 3.2). A query may carry RD, AD or CD;
# any other bit (AA, TC, RA, Z, an rcode) makes it unusual. The opcode must be QUERY (0).
QR, AA, TC, RD = 0x8000, 0x0400, 0x0200, 0x0100
QUERY_FLAGS_ALLOWED = RD | 0x0020 | 0x0010
OPT_RECORD_SIZE = 11  # root name, type, class, TTL, RDLENGTH: an OPT without options

# Sections, in the order they are written.
ANSWER, AUTHORITY, ADDITIONAL = 0, 1, 2


class Declined(Exception):
    """Not a query this codec answers; the caller answers it with dnspython instead."""


@dataclass(frozen=True, slots=True)
class SimpleQuery:
    query_id: int
    recursion_desired: bool
    question: bytes  # the question as it came, case kept: the answer repeats it
    labels: tuple[bytes, ...]  # the name's labels as asked, root left out
    qtype: int
    edns_payload: int | None  # the OPT's UDP payload size; None without EDNS


@dataclass(frozen=True, slots=True)
class WireName:
    """An absolute name ready to write: each label with its length octet, and each suffix in
    lower case, the key under which earlier names are found for compression."""

    labels: tuple[bytes, ...]
    suffixes: tuple[tuple[bytes, ...], ...]

    @classmethod
    def of(cls, labels: tuple[bytes, ...]) -> WireName:
        """From labels without the root one."""
        lowered = tuple(label.lower() for label in labels)
        return cls(
            tuple(bytes((len(label),)) + label for label in labels),
            tuple(lowered[index:] for index in range(len(lowered))),
        )


# Rdata ready to write: complete bytes (RDLENGTH included) when it holds no name to compress
# (A, AAAA, TXT, SRV, whose target is never compressed: RFC 2782), or its parts in order.
RdataWire = bytes | tuple[WireName | bytes, ...]


@dataclass(frozen=True, slots=True)
class RRsetWire:
    owner: WireName
    head: bytes  # type, class and TTL, shared by every record of the set
    rdatas: tuple[RdataWire, ...]
    # Per record, what follows the owner when it holds no name to compress (head and rdata
    # in one piece: one copy a record), else None.
    tails: tuple[bytes | None, ...]

    @classmethod
    def of(cls, owner: WireName, head: bytes, rdatas: tuple[RdataWire, ...]) -> RRsetWire:
        tails = tuple(head + rdata if isinstance(rdata, bytes) else None for rdata in rdatas)
        return cls(owner, head, rdatas, tails)


# -- reading a query ----------------------------------------------------------------------------


def parse_query(wire: bytes) -> SimpleQuery:
    """The query, if it is one this codec answers; `Declined` otherwise."""
    if not HEADER_SIZE < len(wire) <= MAX_QUERY:
        raise Declined("size")
    query_id, flags, questions, answers, authorities, additionals = HEADER.unpack_from(wire)
    if flags & ~QUERY_FLAGS_ALLOWED or (questions, answers, authorities) != (1, 0, 0):
        raise Declined("header")
    labels, end = _read_name(wire, HEADER_SIZE)
    if end + QUESTION_FIXED.size > len(wire):
        raise Declined("short question")
    qtype, qclass = QUESTION_FIXED.unpack_from(wire, end)
    if qclass != CLASS_IN or not _is_data_type(qtype):
        raise Declined("class or type")
    question_end = end + QUESTION_FIXED.size
    payload, message_end = _read_opt(wire, question_end) if additionals == 1 else (None, None)
    if additionals > 1 or (message_end or question_end) != len(wire):
        raise Declined("additional records or trailing octets")
    question = wire[HEADER_SIZE:question_end]
    return SimpleQuery(query_id, bool(flags & RD), question, labels, qtype, payload)


def _is_data_type(qtype: int) -> bool:
    """Not 0, not OPT, not a meta or question type (128-255: AXFR, ANY and so on; RFC 6895 3.1)."""
    return qtype != 0 and qtype != TYPE_OPT and not 128 <= qtype <= 255


def _read_name(wire: bytes, position: int) -> tuple[tuple[bytes, ...], int]:
    """Uncompressed labels from `position`, and where the name ends."""
    labels: list[bytes] = []
    start = position
    while True:
        if position >= len(wire):
            raise Declined("short name")
        length = wire[position]
        if length == 0:
            break
        if length > MAX_LABEL:
            raise Declined("a pointer or an extended label type")
        labels.append(wire[position + 1 : position + 1 + length])
        position += 1 + length
    if position + 1 - start > MAX_NAME:
        raise Declined("name too long")
    return tuple(labels), position + 1


def _read_opt(wire: bytes, position: int) -> tuple[int, int]:
    """The payload size of the OPT at `position` (RFC 6891 6.1.2), and where it ends."""
    if position + OPT_RECORD_SIZE > len(wire) or wire[position] != 0:
        raise Declined("not an OPT owned by the root")
    rdtype, payload, extended, length = RECORD_FIXED.unpack_from(wire, position + 1)
    if rdtype != TYPE_OPT or extended != 0:  # extended rcode, version 0, DO and Z all clear
        raise Declined("not a plain OPT of version 0")
    options_start = position + OPT_RECORD_SIZE
    end = options_start + length
    if end > len(wire):
        raise Declined("short OPT")
    _check_options(wire[options_start:end])
    return payload, end


def _check_options(options: bytes) -> None:
    """Only a well-formed COOKIE (RFC 7873 4), which the answer does not echo (as before)."""
    position = 0
    while position < len(options):
        if position + 4 > len(options):
            raise Declined("short option")
        code, length = struct.unpack_from("!HH", options, position)
        server_cookie = length - CLIENT_COOKIE
        if code != OPTION_COOKIE or (server_cookie != 0 and server_cookie not in SERVER_COOKIE):
            raise Declined("an option other than a cookie")
        position += 4 + length
    if position != len(options):
        raise Declined("an option overruns the OPT")


# -- writing an answer --------------------------------------------------------------------------


class AnswerWriter:
    """One answer being laid out: header, the question as asked, then whole RRsets."""

    __slots__ = ("_counts", "_full", "_out", "_room", "_table", "query", "truncated")

    def __init__(self, query: SimpleQuery, max_size: int) -> None:
        self.query = query
        self.truncated = False
        self._out = bytearray(HEADER_SIZE) + query.question
        self._counts = [0, 0, 0]
        self._full = False
        # The OPT is written last but its room is kept from the start, as dnspython does.
        reserved = OPT_RECORD_SIZE if query.edns_payload is not None else 0
        self._room = max_size - reserved
        self._table: dict[tuple[bytes, ...], int] = {}
        lowered = tuple(label.lower() for label in query.labels)
        offset = HEADER_SIZE
        for index, label in enumerate(query.labels):
            self._table[lowered[index:]] = offset
            offset += 1 + len(label)

    @property
    def space(self) -> int:
        """Octets left for records, the OPT's room kept."""
        return self._room - len(self._out)

    def add(self, section: int, rrset: RRsetWire) -> bool:
        """Write the RRset if it fits; once one does not, nothing more is written (and the
        answer is marked truncated unless only additional data was left out)."""
        if self._full:
            return False
        start = len(self._out)
        self._records(rrset)
        if len(self._out) > self._room:
            self._rollback(start)
            self._full = True
            self.truncated = self.truncated or section < ADDITIONAL
            return False
        self._counts[section] += len(rrset.rdatas)
        return True

    def cost(self, rrset: RRsetWire) -> int:
        """What the RRset would add here, without adding it."""
        start = len(self._out)
        self._records(rrset)
        cost = len(self._out) - start
        self._rollback(start)
        return cost

    def finish(self, flags: int, rcode: int, payload: int) -> bytes:
        """The answer: the header filled in, and an OPT advertising `payload` if the query had
        one (RFC 6891 6.2.3: without options, DO clear, as before)."""
        additionals = self._counts[ADDITIONAL]
        if self.query.edns_payload is not None:
            self._out += b"\x00" + RECORD_FIXED.pack(TYPE_OPT, payload, 0, 0)
            additionals += 1
        recursion = RD if self.query.recursion_desired else 0
        flags |= QR | recursion | rcode | (TC if self.truncated else 0)
        answers, authorities = self._counts[ANSWER], self._counts[AUTHORITY]
        header = (self.query.query_id, flags, 1, answers, authorities, additionals)
        HEADER.pack_into(self._out, 0, *header)
        return bytes(self._out)

    def _records(self, rrset: RRsetWire) -> None:
        for rdata, tail in zip(rrset.rdatas, rrset.tails, strict=True):
            self._name(rrset.owner)
            if tail is not None:
                self._out += tail
            else:
                self._out += rrset.head
                self._rdata(rdata)

    def _name(self, name: WireName) -> None:
        """Write a name, ending in a pointer to the longest suffix written before; remember
        where its other suffixes start (dnspython's compression, so the sizes agree)."""
        out, table = self._out, self._table
        whole = table.get(name.suffixes[0]) if name.suffixes else None
        if whole is not None:  # the usual case: the owner is the question's name
            out += POINTER.pack(0xC000 | whole)
            return
        for label, suffix in zip(name.labels, name.suffixes, strict=True):
            pointer = table.get(suffix)
            if pointer is not None:
                out += POINTER.pack(0xC000 | pointer)
                return
            if len(out) <= MAX_POINTER_OFFSET:
                table[suffix] = len(out)
            out += label
        out.append(0)

    def _rdata(self, rdata: RdataWire) -> None:
        if isinstance(rdata, bytes):
            self._out += rdata
            return
        length_at = len(self._out)
        self._out += b"\x00\x00"
        for part in rdata:
            if isinstance(part, bytes):
                self._out += part
            else:
                self._name(part)
        POINTER.pack_into(self._out, length_at, len(self._out) - length_at - 2)

    def _rollback(self, start: int) -> None:
        del self._out[start:]
        self._table = {suffix: at for suffix, at in self._table.items() if at < start}
