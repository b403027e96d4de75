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


def test_a_peer_written_anew_is_heard_by_its_new_handshake_at_the_old_byte_count() -> None:
    """The agent writes a WireGuard peer anew for a new session at once: its counters start
    from nothing. One handshake's answer brings bytes in back to 92, as before the rewrite;
    its new handshake is what tells that the peer was heard."""
    liveness = Liveness()
    before = PeerStatus(KEY, latest_handshake=100.0, rx_bytes=92, tx_bytes=500)
    liveness.observe(DeviceStatus(peers={KEY: before}), now=100.0)
    answered = PeerStatus(KEY, latest_handshake=104.0, rx_bytes=92, tx_bytes=180)
    liveness.observe(DeviceStatus(peers={KEY: answered}), now=104.0)
    assert liveness.last_seen(KEY) == 104.0


def test_data_a_peer_written_anew_leaves_unanswered_is_a_stall() -> None:
    """... and what it sends is counted from its new counters: 400 bytes out after a rewrite
    from 500 went unnoticed until they passed 500."""
    liveness = Liveness()
    before = PeerStatus(KEY, latest_handshake=100.0, rx_bytes=92, tx_bytes=500)
    liveness.observe(DeviceStatus(peers={KEY: before}), now=100.0)
    for now, tx in ((101.0, 148), (102.0, 400)):
        liveness.observe(DeviceStatus(peers={KEY: PeerStatus(KEY, tx_bytes=tx)}), now=now)
    assert liveness.stalled(KEY, now=103.0)
