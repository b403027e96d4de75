"""The relay core, sans-I/O: WireGuard datagrams between two peers that cannot punch, forwarded
on the rendezvous's own WireGuard port without decrypting anything.

An agent that relays to a peer sets that peer's endpoint to the rendezvous. Its datagrams then
arrive here from the mapping its keepalives to us keep open, which the responder confirmed, so
the sender is known by its source. Where each goes (whitepaper section 5.4):
- an initiation names its target only through mac1, keyed by the target's public key; it is
  checked against the sender's relay partners only (the peers it asked to relay with), never
  against every peer;
- a response, a cookie reply and transport data carry the receiver's index, which we learned
  when we forwarded the message that index came in.
The receiving WireGuard roams to our address by itself, so stock WireGuard works at both ends.

Not a reflector: a datagram is forwarded only from a member's confirmed endpoint to its partner's
confirmed endpoint, byte for byte (never more out than in), within the sender's byte allowance.
Every table is bounded: partners per member, and index routes per member (the oldest go).

Shared by two threads: the loop (membership from the registry, handshake messages) and the
WireGuard port's reader thread (transport data, udp.py), so every public method holds one lock
(uncontended, a fraction of a microsecond). The counters are plain numbers the loop may read
at any time.
"""

from __future__ import annotations

import collections
import hmac
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

from meshpeer.common.endpoints import Endpoint

from . import noise, timers, wire
from .bucket import Bucket

Forward = tuple[bytes, Endpoint]
_RouteKey = tuple[bytes, int]  # (the key the datagram comes from, the receiver index it names)


@dataclass(slots=True)
class _Member:
    public_key: bytes
    mac1_key: bytes  # HASH(LABEL_MAC1 || key): what an initiation for this member is keyed by
    endpoint: Endpoint | None = None
    # Until when the endpoint is trusted: a NAT gives an expired mapping to someone else, who
    # must not relay as this member. None: loaded from the store, trusted for a grace from the
    # first datagram (the member's WireGuard rehandshakes with a restarted rendezvous by then).
    trusted_until: float | None = None
    named: set[bytes] = field(default_factory=set)  # the partners this member asked for
    named_by: set[bytes] = field(default_factory=set)  # the members that asked for this one
    bytes_left: Bucket = field(default_factory=lambda: Bucket(0.0))  # what it may relay
    # Initiations it may still send through us: each costs a mac1 per partner it named, and
    # is all a member can send to a partner that never answered.
    initiations: Bucket = field(default_factory=lambda: Bucket(timers.RELAY_INITIATIONS_BURST))
    routes: collections.deque[_RouteKey] = field(default_factory=collections.deque)


class Relay:
    def __init__(
        self,
        *,
        bytes_per_s: float = timers.RELAY_BYTES_PER_S,
        burst_bytes: float = timers.RELAY_BURST_BYTES,
    ) -> None:
        self._bytes_per_s = bytes_per_s
        self._burst = burst_bytes
        self._members: dict[bytes, _Member] = {}
        self._by_endpoint: dict[Endpoint, _Member] = {}
        self._routes: dict[_RouteKey, bytes] = {}  # -> the key it goes to
        self._outgoing: list[Forward] = []
        self._lock = threading.Lock()
        self.packets = 0
        self.bytes = 0
        self.drops: collections.Counter[str] = collections.Counter()

    # -- who may relay, from the registry (authenticated) --------------------------------------

    def set_endpoint(
        self, public_key: bytes, endpoint: Endpoint | None, now: float | None = None
    ) -> None:
        """A member's confirmed endpoint (None: not confirmed yet), confirmed at `now` (the
        datagram clock; None: from the store, before any datagram)."""
        with self._lock:
            member = self._member(public_key)
            member.trusted_until = None if now is None else now + timers.RELAY_ENDPOINT_FRESH_S
            if member.endpoint is not None and self._by_endpoint.get(member.endpoint) is member:
                del self._by_endpoint[member.endpoint]
            member.endpoint = endpoint
            if endpoint is not None:
                previous = self._by_endpoint.get(endpoint)
                if previous is not None and previous is not member:
                    previous.endpoint = None  # a NAT gave the mapping to someone else
                self._by_endpoint[endpoint] = member

    def set_partners(self, public_key: bytes, partners: Iterable[bytes]) -> None:
        """The peers `public_key` asked to relay with (replacing what it asked before). A pair
        relays both ways for answers and transport, whichever side asked, but an initiation
        is matched only against the partners its sender named: at most RELAY_PARTNERS_PER_PEER
        MACs, whoever else named the sender (so naming a victim costs the victim nothing)."""
        with self._lock:
            member = self._member(public_key)
            wanted = [key for key in dict.fromkeys(partners) if key != public_key]
            wanted = wanted[: timers.RELAY_PARTNERS_PER_PEER]
            for gone in member.named - set(wanted):
                member.named.discard(gone)
                self._members[gone].named_by.discard(public_key)
            for key in wanted:
                other = self._member(key)
                if key in member.named:
                    continue
                member.named.add(key)
                other.named_by.add(public_key)

    def remove(self, public_key: bytes) -> None:
        with self._lock:
            member = self._members.pop(public_key, None)
            if member is None:
                return
            for key in member.named:
                self._members[key].named_by.discard(public_key)
            for key in member.named_by:
                self._members[key].named.discard(public_key)
            if member.endpoint is not None and self._by_endpoint.get(member.endpoint) is member:
                del self._by_endpoint[member.endpoint]
            for route in member.routes:
                self._forget_route(member, route)

    def pairs(self) -> int:
        """Pairs that relay, each counted once whichever side (or both) asked."""
        with self._lock:
            found = {
                (min(member.public_key, key), max(member.public_key, key))
                for member in self._members.values()
                for key in member.named
            }
            return len(found)

    # -- the datagram path --------------------------------------------------------------------

    def receive_datagram(self, data: bytes, source: Endpoint, now: float) -> None:
        """As a core of the WireGuard port (wgport.py): what the responder does not claim."""
        message = wire.parse_counted(data, self.drops)
        if message is None:
            return
        forward = self.forward(message, data, source, now)
        if forward is not None:
            self._outgoing.append(forward)

    def datagrams_to_send(self) -> list[Forward]:
        outgoing, self._outgoing = self._outgoing, []
        return outgoing

    def next_event(self) -> None:
        return None  # the relay learns nothing the registry must hear of

    def forward(
        self, message: wire.Message, data: bytes, source: Endpoint, now: float
    ) -> Forward | None:
        """Where `data` (already parsed as `message`) goes, or None (a counted drop)."""
        with self._lock:
            sender = self._sender(source, now)
            if sender is None:
                return None
            target = self._target(sender, message, now)
            if target is None or not self._may_send(sender, target, len(data), now):
                return None
            self._learn(sender, target, message)
            return data, target.endpoint  # type: ignore[return-value]  # _may_send checked it

    def transport_destination(self, data: bytes, source: Endpoint, now: float) -> Endpoint | None:
        """`forward` for a transport datagram (type 4, at least wire.TRANSPORT_MIN_SIZE long),
        without building a message: nearly every relayed datagram is one, so this is the hot
        path. Same checks, same counters; transport data teaches no route."""
        with self._lock:
            sender = self._sender(source, now)
            if sender is None:
                return None
            target = self._routed(sender, int.from_bytes(data[4:8], "little"))
            if target is None or not self._may_send(sender, target, len(data), now):
                return None
            return target.endpoint

    def _sender(self, source: Endpoint, now: float) -> _Member | None:
        sender = self._by_endpoint.get(source)
        if sender is None or not (sender.named or sender.named_by):
            self.drops["not_a_relay_member"] += 1
            return None
        if not _trusted(sender, now):
            self.drops["endpoint_stale"] += 1
            return None
        return sender

    def _may_send(self, sender: _Member, target: _Member, size: int, now: float) -> bool:
        """Whether `size` bytes may go to `target` now (and counts them if so)."""
        if target.endpoint is None or not _trusted(target, now):
            self.drops["partner_not_confirmed"] += 1
            return False
        if sender.bytes_left.take(now, self._bytes_per_s, self._burst, size):
            self.drops["rate_limited"] += 1
            return False
        self.packets += 1
        self.bytes += size
        return True

    def _target(self, sender: _Member, message: wire.Message, now: float) -> _Member | None:
        if isinstance(message, wire.Initiation):
            rate, burst = timers.RELAY_INITIATIONS_PER_S, timers.RELAY_INITIATIONS_BURST
            if sender.initiations.take(now, rate, burst):
                self.drops["initiations_limited"] += 1
                return None
            body = message.raw[: wire.INITIATION_MAC1_END]
            for key in sender.named:
                partner = self._members[key]
                if hmac.compare_digest(noise.mac(partner.mac1_key, body), message.mac1):
                    return partner
            self.drops["no_partner_for_mac1"] += 1
            return None
        return self._routed(sender, message.receiver)

    def _routed(self, sender: _Member, receiver: int) -> _Member | None:
        """The partner that handed out index `receiver` in a handshake we forwarded."""
        destination = self._routes.get((sender.public_key, receiver))
        if destination is None or not _paired(sender, destination):
            self.drops["unknown_index"] += 1
            return None
        return self._members[destination]

    def _learn(self, sender: _Member, target: _Member, message: wire.Message) -> None:
        """An initiation or response brings the sender's index: answers to it go back to it."""
        if isinstance(message, wire.Initiation | wire.Response):
            route = (target.public_key, message.sender)
            if self._routes.get(route) != sender.public_key:
                self._routes[route] = sender.public_key
                sender.routes.append(route)
                if len(sender.routes) > timers.RELAY_ROUTES_PER_PEER:
                    self._forget_route(sender, sender.routes.popleft())

    def _forget_route(self, owner: _Member, route: _RouteKey) -> None:
        """A route `owner` left, unless another member's handshake has taken it over since."""
        if self._routes.get(route) == owner.public_key:
            del self._routes[route]

    def _member(self, public_key: bytes) -> _Member:
        member = self._members.get(public_key)
        if member is None:
            mac1_key = noise.blake2s(noise.LABEL_MAC1, public_key)
            member = self._members[public_key] = _Member(public_key, mac1_key)
            member.bytes_left.level = self._burst
        return member


def _trusted(member: _Member, now: float) -> bool:
    """Whether an authenticated keepalive came from the member's endpoint recently enough."""
    if member.trusted_until is None:
        member.trusted_until = now + timers.RELAY_STORED_ENDPOINT_GRACE_S
    return now < member.trusted_until


def _paired(member: _Member, key: bytes) -> bool:
    return key in member.named or key in member.named_by
