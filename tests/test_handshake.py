"""The handshake core without a network: vectors, every accept and drop path, and fuzzing."""

from __future__ import annotations

import hmac

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from meshpeer.rendezvous import noise, wire
from meshpeer.rendezvous.handshake import (
    EndpointConfirmed,
    Event,
    InitiationAccepted,
    Responder,
)
from meshpeer.rendezvous.initiator import HandshakeFailed, Initiator
from meshpeer.rendezvous.replay import ReplayWindow
from meshpeer.rendezvous.timers import REJECT_AFTER_MESSAGES, REPLAY_WINDOW

PEER = ("198.51.100.7", 40000)
T0 = 1_700_000_000.0  # unix time used for TAI64N labels


def pair(load_limit: int = 500) -> tuple[Responder, Initiator]:
    responder = Responder(X25519PrivateKey.generate(), initiations_per_s_under_load=load_limit)
    initiator = Initiator(X25519PrivateKey.generate(), responder.public_key)
    responder.authorize(initiator.public_key)
    return responder, initiator


def handshake(responder: Responder, initiator: Initiator, now: float = 1.0) -> None:
    responder.receive_datagram(initiator.initiation(T0 + now, now), PEER, now)
    [(response, destination)] = responder.datagrams_to_send()
    assert destination == PEER
    initiator.receive(response, now)


def events(responder: Responder) -> list[Event]:
    found: list[Event] = []
    while (event := responder.next_event()) is not None:
        found.append(event)
    return found


# -- primitives against published vectors ------------------------------------------------------


def test_hchacha20_vector_of_draft_irtf_cfrg_xchacha_2_2_1() -> None:
    key = bytes(range(32))
    nonce = bytes.fromhex("000000090000004a0000000031415927")
    assert noise.hchacha20(key, nonce).hex() == (
        "82413b4227b27bfed30e42508a877d73a0f9e4d58a74a853c12ec41326d3ecdc"
    )


def test_xchacha20_poly1305_vector_of_draft_irtf_cfrg_xchacha_a_3_1() -> None:
    key = bytes.fromhex("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f")
    nonce = bytes.fromhex("404142434445464748494a4b4c4d4e4f5051525354555657")
    associated = bytes.fromhex("50515253c0c1c2c3c4c5c6c7")
    plaintext = (
        b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the "
        b"future, sunscreen would be it."
    )
    sealed = noise.xaead_encrypt(key, nonce, plaintext, associated)
    assert sealed[:16].hex() == "bd6d179d3e83d43b9576579493c0e939"
    assert sealed[-16:].hex() == "c0875924c1c7987947deafd8780acf49"
    assert noise.xaead_decrypt(key, nonce, sealed, associated) == plaintext
    with pytest.raises(noise.CryptoError):
        noise.xaead_decrypt(key, nonce, sealed, b"other")


def test_tai64n_labels_and_hides_fine_time() -> None:
    assert noise.tai64n(0).hex() == "400000000000000a00000000"
    label = noise.tai64n(1.999999999)
    assert label[:8].hex() == "400000000000000b"
    assert int.from_bytes(label[8:], "big") & 0xFFFFFF == 0


def test_low_order_public_keys_are_refused() -> None:
    with pytest.raises(noise.CryptoError):
        noise.dh(X25519PrivateKey.generate(), bytes(32))


# -- the handshake ----------------------------------------------------------------------------


def test_handshake_then_keepalive_confirms_the_endpoint() -> None:
    responder, initiator = pair()
    handshake(responder, initiator)
    assert [type(event) for event in events(responder)] == [InitiationAccepted]

    responder.receive_datagram(initiator.keepalive(), ("198.51.100.7", 40001), 1.5)

    assert events(responder) == [EndpointConfirmed(initiator.public_key, ("198.51.100.7", 40001))]
    assert responder.counts == {"handshakes": 1, "transport": 1}
    assert not responder.drops


def test_unknown_keys_get_nothing() -> None:
    responder, _ = pair()
    stranger = Initiator(X25519PrivateKey.generate(), responder.public_key)
    responder.receive_datagram(stranger.initiation(T0), PEER, 1.0)
    assert responder.datagrams_to_send() == [] and events(responder) == []
    assert responder.drops == {"unknown_peer": 1}


def test_a_wrong_mac1_is_dropped_before_any_key_exchange() -> None:
    responder, initiator = pair()
    initiation = bytearray(initiator.initiation(T0))
    initiation[120] ^= 1
    responder.receive_datagram(bytes(initiation), PEER, 1.0)
    assert responder.drops == {"bad_mac1": 1} and responder.datagrams_to_send() == []


def test_a_replayed_initiation_is_refused() -> None:
    responder, initiator = pair()
    initiation = initiator.initiation(T0)
    responder.receive_datagram(initiation, PEER, 1.0)
    responder.datagrams_to_send()
    responder.receive_datagram(initiation, ("203.0.113.66", 9), 5.0)
    assert responder.datagrams_to_send() == []
    assert responder.drops == {"replayed_initiation": 1}


def test_the_timestamp_floor_survives_a_restart() -> None:
    rendezvous_key = X25519PrivateKey.generate()
    responder = Responder(rendezvous_key)
    initiator = Initiator(X25519PrivateKey.generate(), responder.public_key)
    responder.authorize(initiator.public_key)
    old = initiator.initiation(T0)
    responder.receive_datagram(initiator.initiation(T0 + 60), PEER, 1.0)
    floor = next(e.timestamp for e in events(responder) if isinstance(e, InitiationAccepted))

    restarted = Responder(rendezvous_key)
    restarted.authorize(initiator.public_key, latest_timestamp=floor)
    restarted.receive_datagram(old, PEER, 1.0)

    assert restarted.drops == {"replayed_initiation": 1}


def test_initiations_are_limited_per_peer() -> None:
    responder, initiator = pair()
    responder.receive_datagram(initiator.initiation(T0 + 1), PEER, 1.0)
    responder.receive_datagram(initiator.initiation(T0 + 2), PEER, 1.01)
    responder.receive_datagram(initiator.initiation(T0 + 3), PEER, 1.03)
    assert responder.drops == {"initiation_flood": 1}
    assert responder.counts["handshakes"] == 2


def test_keepalives_are_accepted_once_and_out_of_order() -> None:
    responder, initiator = pair()
    handshake(responder, initiator)
    first, second = initiator.keepalive(), initiator.keepalive()
    for datagram in (second, first, second):
        responder.receive_datagram(datagram, PEER, 2.0)
    assert responder.counts["transport"] == 2
    assert responder.drops == {"replayed_transport": 1}


def test_sessions_expire_and_are_bounded() -> None:
    responder, initiator = pair()
    handshake(responder, initiator, now=1.0)
    oldest = initiator.keepalive()
    handshake(responder, initiator, now=2.0)
    handshake(responder, initiator, now=3.0)
    responder.receive_datagram(oldest, PEER, 3.5)
    responder.receive_datagram(initiator.keepalive(), PEER, 3.0 + 180.0)
    assert responder.drops == {"unknown_session": 1, "expired_session": 1}


def test_forged_keepalives_are_dropped() -> None:
    responder, initiator = pair()
    handshake(responder, initiator)
    forged = bytearray(initiator.keepalive())
    forged[-1] ^= 1
    responder.receive_datagram(bytes(forged), PEER, 2.0)
    assert responder.drops == {"bad_transport": 1} and events(responder)[1:] == []


def test_revoked_peers_lose_their_sessions() -> None:
    responder, initiator = pair()
    handshake(responder, initiator)
    responder.revoke(initiator.public_key)
    responder.receive_datagram(initiator.keepalive(), PEER, 2.0)
    responder.receive_datagram(initiator.initiation(T0 + 9), PEER, 3.0)
    assert responder.drops == {"unknown_session": 1, "unknown_peer": 1}


def test_under_load_a_cookie_is_required_and_then_works() -> None:
    responder, initiator = pair(load_limit=2)
    others = [Initiator(X25519PrivateKey.generate(), responder.public_key) for _ in range(2)]
    for other in others:
        responder.authorize(other.public_key)
        responder.receive_datagram(other.initiation(T0), ("198.51.100.9", 1), 10.0)
    responder.datagrams_to_send()

    responder.receive_datagram(initiator.initiation(T0 + 1, now=10.1), PEER, 10.1)
    [(cookie_reply, _)] = responder.datagrams_to_send()
    assert len(cookie_reply) == wire.COOKIE_REPLY_SIZE and responder.under_load(10.1)
    initiator.receive(cookie_reply, now=10.1)

    retry = initiator.initiation(T0 + 2, now=10.2)
    responder.receive_datagram(retry, ("203.0.113.50", 1), 10.2)  # another address: no
    responder.receive_datagram(retry, PEER, 10.3)
    [(response, _)] = [d for d in responder.datagrams_to_send() if len(d[0]) == 92]
    initiator.receive(response)
    assert responder.drops["cookie_required"] == 2
    assert initiator.keys is not None


def test_the_initiator_refuses_answers_that_are_not_for_it() -> None:
    responder, initiator = pair()
    responder.receive_datagram(initiator.initiation(T0), PEER, 1.0)
    [(response, _)] = responder.datagrams_to_send()
    tampered = bytearray(response)
    tampered[50] ^= 1
    with pytest.raises(HandshakeFailed):
        initiator.receive(bytes(tampered))
    with pytest.raises(HandshakeFailed):
        Initiator(X25519PrivateKey.generate(), responder.public_key).receive(response)


# -- the replay window ------------------------------------------------------------------------


def test_replay_window_edges() -> None:
    window = ReplayWindow()
    assert window.accept(0) and not window.accept(0)
    assert window.accept(REPLAY_WINDOW + 10)
    assert not window.accept(10), "older than the window"
    assert window.accept(11) and not window.accept(11)
    assert window.accept(2**62) and window.accept(2**62 - 1)
    assert not window.accept(REJECT_AFTER_MESSAGES)


# -- hostile input ----------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_parse_raises_only_its_error(datagram: bytes) -> None:
    try:
        wire.parse(datagram)
    except wire.MalformedMessage:
        pass


_FUZZ_RESPONDER, _FUZZ_INITIATOR = pair()
handshake(_FUZZ_RESPONDER, _FUZZ_INITIATOR)
_VALID = [_FUZZ_INITIATOR.initiation(T0 + 5, 0.0), _FUZZ_INITIATOR.keepalive()]


@settings(max_examples=600, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=200),
        st.tuples(
            st.sampled_from(_VALID), st.lists(st.tuples(st.integers(0, 147), st.integers(1, 255)))
        ).map(lambda case: _mutate(*case)),
    ),
    st.floats(min_value=0, max_value=1e6),
)
def test_no_datagram_raises_out_of_the_core(datagram: bytes, now: float) -> None:
    _FUZZ_RESPONDER.receive_datagram(datagram, PEER, now)
    _FUZZ_RESPONDER.datagrams_to_send()
    events(_FUZZ_RESPONDER)


def _mutate(valid: bytes, flips: list[tuple[int, int]]) -> bytes:
    mutated = bytearray(valid)
    for offset, mask in flips:
        mutated[offset % len(mutated)] ^= mask
    return bytes(mutated)


@given(key=st.binary(max_size=100), data=st.binary(max_size=200))
def test_hand_made_hmac_blake2s_is_hmac(key: bytes, data: bytes) -> None:
    assert noise.hmac_blake2s(key, data) == hmac.digest(key, data, "blake2s")
