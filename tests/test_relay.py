"""The relay core without a network: a real handshake and keepalive through it, and everything
that must not pass (strangers, non-partners, made-up indices, floods), with bounded tables."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from meshpeer.common.endpoints import Endpoint
from meshpeer.rendezvous import noise, timers, wire
from meshpeer.rendezvous.handshake import EndpointConfirmed, Responder
from meshpeer.rendezvous.initiator import Initiator
from meshpeer.rendezvous.relay import Relay

RELAY_AT: Endpoint = ("203.0.113.1", 51820)
ALICE_AT: Endpoint = ("198.51.100.7", 40001)  # alice's NAT mapping towards the rendezvous
BOB_AT: Endpoint = ("192.0.2.9", 50002)
NOW = 1000.0


class Pair:
    """Alice initiates to Bob through the relay; Bob is a real responder that knows Alice."""

    def __init__(self, core: Relay | None = None) -> None:
        self.relay = core or Relay()
        alice_key, self.bob_key = X25519PrivateKey.generate(), X25519PrivateKey.generate()
        self.bob = Responder(self.bob_key)
        self.alice = Initiator(alice_key, self.bob.public_key)
        self.alice_public = self.alice.public_key
        self.bob.authorize(self.alice_public)
        self.relay.set_endpoint(self.alice_public, ALICE_AT)
        self.relay.set_endpoint(self.bob.public_key, BOB_AT)

    def pass_through(self, data: bytes, source: Endpoint) -> tuple[bytes, Endpoint] | None:
        """As the WireGuard port sends it: transport data by the relay's hot path."""
        if data[0] == wire.MessageType.TRANSPORT:
            destination = self.relay.transport_destination(data, source, NOW)
            return None if destination is None else (data, destination)
        return self.relay.forward(wire.parse(data), data, source, NOW)

    def handshake(self) -> None:
        initiation = self.alice.initiation(unix_time=NOW, now=NOW)
        assert self.pass_through(initiation, ALICE_AT) == (initiation, BOB_AT)
        self.bob.receive_datagram(initiation, RELAY_AT, NOW)
        [(response, to)] = self.bob.datagrams_to_send()
        assert to == RELAY_AT  # Bob answers where the initiation came from: the relay
        assert self.pass_through(response, BOB_AT) == (response, ALICE_AT)
        self.alice.receive(response, NOW)


def test_a_handshake_and_a_keepalive_go_through_unchanged() -> None:
    pair = Pair()
    pair.relay.set_partners(pair.alice_public, [pair.bob.public_key])
    pair.handshake()
    keepalive = pair.alice.keepalive()
    assert pair.pass_through(keepalive, ALICE_AT) == (keepalive, BOB_AT)
    pair.bob.receive_datagram(keepalive, RELAY_AT, NOW)
    assert pair.bob.next_event() is not None  # the initiation
    assert pair.bob.next_event() == EndpointConfirmed(pair.alice_public, RELAY_AT)
    assert pair.relay.packets == 3 and pair.relay.bytes == 148 + 92 + 32
    assert pair.relay.pairs() == 1


def test_a_stranger_with_a_valid_mac1_gets_nothing_forwarded() -> None:
    pair = Pair()
    pair.relay.set_partners(pair.alice_public, [pair.bob.public_key])
    initiation = pair.alice.initiation(unix_time=NOW, now=NOW)
    assert pair.pass_through(initiation, ("198.51.100.66", 40001)) is None
    assert pair.relay.drops == {"not_a_relay_member": 1} and pair.relay.packets == 0


def test_only_partners_are_reached_and_only_at_their_confirmed_endpoint() -> None:
    pair = Pair()
    initiation = pair.alice.initiation(unix_time=NOW, now=NOW)
    assert pair.pass_through(initiation, ALICE_AT) is None  # no pair asked for
    carol = X25519PrivateKey.generate()
    pair.relay.set_partners(pair.alice_public, [noise.public_bytes(carol)])
    pair.relay.set_endpoint(noise.public_bytes(carol), ("192.0.2.33", 1))
    assert pair.pass_through(initiation, ALICE_AT) is None  # mac1 is for Bob, not a partner
    pair.relay.set_partners(pair.alice_public, [pair.bob.public_key])
    pair.relay.set_endpoint(pair.bob.public_key, None)
    assert pair.pass_through(initiation, ALICE_AT) is None  # Bob's endpoint not confirmed
    assert pair.relay.drops == {
        "not_a_relay_member": 1,
        "no_partner_for_mac1": 1,
        "partner_not_confirmed": 1,
    }


def test_made_up_indices_and_answers_to_nobody_are_dropped() -> None:
    pair = Pair()
    pair.relay.set_partners(pair.alice_public, [pair.bob.public_key])
    pair.handshake()
    keys = pair.alice.keys
    assert keys is not None
    for receiver in (keys.local_index, keys.remote_index ^ 1, 0):
        header = (4).to_bytes(4, "little") + receiver.to_bytes(4, "little") + bytes(8)
        datagram = header + bytes(16)
        assert pair.relay.forward(wire.parse(datagram), datagram, ALICE_AT, NOW) is None
    assert pair.relay.drops["unknown_index"] == 3


def test_a_moved_endpoint_is_followed_and_a_removed_member_is_forgotten() -> None:
    pair = Pair()
    pair.relay.set_partners(pair.alice_public, [pair.bob.public_key])
    pair.handshake()
    moved: Endpoint = ("192.0.2.9", 50999)  # Bob's NAT rebooted
    pair.relay.set_endpoint(pair.bob.public_key, moved)
    keepalive = pair.alice.keepalive()
    assert pair.pass_through(keepalive, ALICE_AT) == (keepalive, moved)
    pair.relay.remove(pair.bob.public_key)
    assert pair.pass_through(pair.alice.keepalive(), ALICE_AT) is None
    assert pair.relay.pairs() == 0


def test_a_flood_is_capped_and_counted_and_never_amplified() -> None:
    pair = Pair(Relay(bytes_per_s=1000, burst_bytes=1000))
    pair.relay.set_partners(pair.alice_public, [pair.bob.public_key])
    sent = forwarded = 0
    for _ in range(100):
        initiation = pair.alice.initiation(unix_time=NOW, now=NOW)
        sent += len(initiation)
        result = pair.pass_through(initiation, ALICE_AT)
        forwarded += len(result[0]) if result else 0
    assert forwarded <= 1000 < sent
    assert pair.relay.drops["rate_limited"] == 100 - forwarded // 148
    later = pair.alice.initiation(unix_time=NOW, now=NOW)
    assert pair.relay.forward(wire.parse(later), later, ALICE_AT, NOW + 1.0) is not None


def test_partners_and_routes_are_bounded() -> None:
    core = Relay()
    sender = noise.public_bytes(X25519PrivateKey.generate())
    others = [bytes([i]) * 32 for i in range(timers.RELAY_PARTNERS_PER_PEER + 10)]
    core.set_partners(sender, others)
    assert core.pairs() == timers.RELAY_PARTNERS_PER_PEER
    pair = Pair()
    pair.relay.set_partners(pair.alice_public, [pair.bob.public_key])
    for i in range(timers.RELAY_ROUTES_PER_PEER + 50):  # within the initiation rate
        initiation = pair.alice.initiation(unix_time=NOW, now=NOW)
        later = NOW + i / timers.RELAY_INITIATIONS_PER_S
        assert pair.relay.forward(wire.parse(initiation), initiation, ALICE_AT, later)
    assert len(pair.relay._routes) == timers.RELAY_ROUTES_PER_PEER


def test_a_mapping_given_to_another_member_moves_with_it() -> None:
    pair = Pair()
    pair.relay.set_partners(pair.alice_public, [pair.bob.public_key])
    dave = noise.public_bytes(X25519PrivateKey.generate())
    pair.relay.set_endpoint(dave, ALICE_AT)  # the NAT reused Alice's mapping for Dave
    initiation = pair.alice.initiation(unix_time=NOW, now=NOW)
    assert pair.pass_through(initiation, ALICE_AT) is None  # Dave has no partners


def test_initiations_need_the_senders_own_naming_answers_need_either_side() -> None:
    pair = Pair()
    pair.relay.set_partners(pair.bob.public_key, [pair.alice_public])  # only Bob named Alice
    initiation = pair.alice.initiation(unix_time=NOW, now=NOW)
    assert pair.pass_through(initiation, ALICE_AT) is None  # mac1 is tried on Alice's own list
    assert pair.relay.drops["no_partner_for_mac1"] == 1
    pair.relay.set_partners(pair.alice_public, [pair.bob.public_key])
    pair.handshake()
    pair.relay.set_partners(pair.alice_public, [])  # the pair still holds: Bob named Alice
    keepalive = pair.alice.keepalive()
    assert pair.pass_through(keepalive, ALICE_AT) == (keepalive, BOB_AT)
    assert pair.relay.pairs() == 1
    pair.relay.set_partners(pair.bob.public_key, [])
    assert pair.relay.pairs() == 0
    assert pair.pass_through(pair.alice.keepalive(), ALICE_AT) is None


def test_the_responder_claims_only_what_is_its_own() -> None:
    pair = Pair()
    rendezvous = Responder(X25519PrivateKey.generate())
    for_bob = pair.alice.initiation(unix_time=NOW, now=NOW)
    assert not rendezvous.claims(for_bob)  # keyed by Bob's key: the relay's
    assert pair.bob.claims(for_bob)
    assert not rendezvous.claims(bytes([2, 0, 0, 0]) + bytes(88))  # a response
    assert not rendezvous.claims(bytes([4, 0, 0, 0]) + bytes(28))  # transport, not our index
    assert rendezvous.claims(b"\x01\x00")  # malformed: the responder counts it


def test_a_full_size_transport_message_is_relayed() -> None:
    """A 1420-byte packet of a 1420 MTU tunnel: 1,452 bytes on the wire, not a multiple of 16
    (WireGuard pads to 16 but never past the MTU). Once dropped as malformed: TCP stalled."""
    pair = Pair()
    pair.relay.set_partners(pair.alice_public, [pair.bob.public_key])
    pair.handshake()
    keys = pair.alice.keys
    assert keys is not None
    full = (4).to_bytes(4, "little") + keys.remote_index.to_bytes(4, "little") + bytes(1452 - 8)
    assert pair.pass_through(full, ALICE_AT) == (full, BOB_AT)


def test_the_transport_hot_path_decides_and_counts_as_forward_does() -> None:
    """Every case of a transport datagram, through `forward` on one relay and the hot path on
    a twin fed the same: same destination, same counters."""
    pair = Pair()
    relays = [pair.relay, Relay()]
    relays[1].set_endpoint(pair.alice_public, ALICE_AT)
    relays[1].set_endpoint(pair.bob.public_key, BOB_AT)
    initiation = pair.alice.initiation(unix_time=NOW, now=NOW)
    pair.bob.receive_datagram(initiation, RELAY_AT, NOW)
    [(response, _)] = pair.bob.datagrams_to_send()
    pair.alice.receive(response, NOW)
    for relay in relays:
        relay.set_partners(pair.alice_public, [pair.bob.public_key])
        for data, source in ((initiation, ALICE_AT), (response, BOB_AT)):
            assert relay.forward(wire.parse(data), data, source, NOW) is not None
    keepalive = pair.alice.keepalive()
    made_up = keepalive[:4] + bytes(4) + keepalive[8:]
    cases = [(keepalive, ALICE_AT), (made_up, ALICE_AT), (keepalive, ("192.0.2.66", 1))]
    for data, source in cases:
        slow = relays[0].forward(wire.parse(data), data, source, NOW)
        assert (slow and slow[1]) == relays[1].transport_destination(data, source, NOW)
    for relay in relays:
        relay.set_endpoint(pair.bob.public_key, None)  # the partner is no longer confirmed
    assert relays[0].forward(wire.parse(keepalive), keepalive, ALICE_AT, NOW) is None
    assert relays[1].transport_destination(keepalive, ALICE_AT, NOW) is None
    for relay in relays:
        assert relay.drops == {
            "unknown_index": 1,
            "not_a_relay_member": 1,
            "partner_not_confirmed": 1,
        }
        assert (relay.packets, relay.bytes) == (3, 148 + 92 + 32)
