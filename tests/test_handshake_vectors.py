"""A known-answer test of one complete handshake: fixed static keys, a seed for every random
draw and a fixed clock give exactly the same initiation, response and first keepalive.

The digests were recorded once from this construction; any change to it (a label, a KDF step,
the order of random draws, the TAI64N encoding) fails here. The derived keys and the responder's
acceptance of the keepalive are checked too, so the recorded bytes are a working handshake.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from meshpeer.rendezvous.handshake import EndpointConfirmed, InitiationAccepted, Responder
from meshpeer.rendezvous.initiator import Initiator

INITIATOR_STATIC = bytes.fromhex("a8" + "11" * 30 + "51")
RESPONDER_STATIC = bytes.fromhex("b0" + "22" * 30 + "62")
SEED = b"meshpeer known-answer handshake"
UNIX_TIME = 1_700_000_000.25  # the initiator's TAI64N stamp
NOW = 7.5  # the responder's monotonic clock
SOURCE = ("198.51.100.7", 40000)

INITIATION_SHA256 = "9257d77f0bd5c4b523d31fefdb1a9697625f9b47fd42837d5c4461f08b9c77bc"
RESPONSE_SHA256 = "8e106bdde8a37670f8fa37c8228963dd0526c17b6bf34a6905311526b70592db"
KEEPALIVE_SHA256 = "8ca6665b8042205199046ba194b9ce8d106bed6b76f189bf36910c022e88f3a7"


def seeded(seed: bytes, stream: bytes) -> Callable[[int], bytes]:
    """A reproducible byte stream: BLAKE2s of seed, stream name and a counter, block after block."""
    counter = itertools.count()
    pool = bytearray()

    def draw(size: int) -> bytes:
        while len(pool) < size:
            block = seed + stream + next(counter).to_bytes(8, "little")
            pool.extend(hashlib.blake2s(block).digest())
        taken = bytes(pool[:size])
        del pool[:size]
        return taken

    return draw


def parties(load_limit: int = 500) -> tuple[Initiator, Responder]:
    responder = Responder(
        X25519PrivateKey.from_private_bytes(RESPONDER_STATIC),
        initiations_per_s_under_load=load_limit,
        random_bytes=seeded(SEED, b"responder"),
    )
    initiator = Initiator(
        X25519PrivateKey.from_private_bytes(INITIATOR_STATIC),
        responder.public_key,
        random_bytes=seeded(SEED, b"initiator"),
    )
    responder.authorize(initiator.public_key)
    return initiator, responder


def complete_handshake() -> tuple[Initiator, Responder, list[bytes]]:
    initiator, responder = parties()
    initiation = initiator.initiation(UNIX_TIME, NOW)
    responder.receive_datagram(initiation, SOURCE, NOW)
    [(response, destination)] = responder.datagrams_to_send()
    assert destination == SOURCE
    initiator.receive(response, NOW)
    keepalive = initiator.keepalive()
    return initiator, responder, [initiation, response, keepalive]


def sha256(datagram: bytes) -> str:
    return hashlib.sha256(datagram).hexdigest()


def test_one_handshake_has_exactly_the_recorded_bytes() -> None:
    _, _, (initiation, response, keepalive) = complete_handshake()
    assert (len(initiation), len(response), len(keepalive)) == (148, 92, 32)
    assert sha256(initiation) == INITIATION_SHA256
    assert sha256(response) == RESPONSE_SHA256
    assert sha256(keepalive) == KEEPALIVE_SHA256


def test_the_recorded_handshake_works_both_ways() -> None:
    initiator, responder, (_, _, keepalive) = complete_handshake()
    assert initiator.keys is not None
    # The responder's receiving key is the initiator's sending key (whitepaper 5.4.5).
    assert responder.receiving_key(initiator.keys.remote_index) == initiator.keys.sending_key
    responder.receive_datagram(keepalive, SOURCE, NOW + 0.1)
    found = []
    while (event := responder.next_event()) is not None:
        found.append(event)
    assert [type(event) for event in found] == [InitiationAccepted, EndpointConfirmed]
    assert found[1] == EndpointConfirmed(initiator.public_key, SOURCE)
    assert not responder.drops


def test_the_same_seed_and_clock_make_the_same_handshake_twice() -> None:
    assert complete_handshake()[2] == complete_handshake()[2]


def test_a_cookie_reply_is_reproducible_too() -> None:
    """Under load the cookie secret and the reply's nonce come from the injected randomness."""

    def cookie_exchange() -> tuple[bytes, bytes]:
        initiator, responder = parties(load_limit=0)  # the first initiation is already load
        responder.receive_datagram(initiator.initiation(UNIX_TIME, NOW), SOURCE, NOW)
        [(cookie_reply, _)] = responder.datagrams_to_send()
        initiator.receive(cookie_reply, NOW)
        retry = initiator.initiation(UNIX_TIME + 1, NOW + 0.5)
        responder.receive_datagram(retry, SOURCE, NOW + 0.5)
        [(response, _)] = responder.datagrams_to_send()
        return cookie_reply, response

    first = cookie_exchange()
    assert first == cookie_exchange()
    assert len(first[0]) == 64 and len(first[1]) == 92  # a cookie reply, then a response
