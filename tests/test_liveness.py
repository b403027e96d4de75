"""Which peers answer, and how the rendezvous answers: the status's pure parts."""

from __future__ import annotations

from meshpeer.peer.liveness import Liveness
from meshpeer.peer.status import RendezvousState
from meshpeer.peer.timers import ONLINE_WINDOW_S
from meshpeer.peer.uapi import DeviceStatus, PeerStatus

KEY = b"p" * 32


def device(rx: int) -> DeviceStatus:
    return DeviceStatus(peers={KEY: PeerStatus(KEY, rx_bytes=rx)})


def test_a_peer_is_online_while_its_bytes_keep_coming() -> None:
    liveness = Liveness()
    liveness.observe(device(0), now=0.0)
    assert not liveness.online(KEY, 0.0) and liveness.last_seen(KEY) is None
    liveness.observe(device(92), now=1.0)
    assert liveness.online(KEY, 1.0 + ONLINE_WINDOW_S - 1)
    liveness.observe(device(92), now=20.0)  # nothing new: last seen stays at 1.0
    assert liveness.last_seen(KEY) == 1.0
    assert not liveness.online(KEY, 1.0 + ONLINE_WINDOW_S)
    liveness.observe(DeviceStatus(), now=40.0)  # the peer was removed
    assert liveness.last_seen(KEY) is None


def test_the_rendezvous_state_says_how_long_it_was_silent() -> None:
    state = RendezvousState("https://192.0.2.1:51821")
    assert state.answered(now=10.0) is None  # the first answer: nothing to report
    state.failed(now=20.0)
    state.failed(now=30.0)  # still the same outage
    assert (state.answering, state.since) == (False, 20.0)
    assert state.answered(now=50.0) == 30.0
    assert (state.answering, state.since) == (True, 50.0)
