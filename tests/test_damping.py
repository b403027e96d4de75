"""Endpoint damping: a NAT reboot is news at once; a member flapping between ports is not."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from meshpeer.rendezvous.damping import EndpointDamper

KEY = b"k" * 32
A, B, C, D = (("198.51.100.1", port) for port in (1000, 2000, 3000, 4000))


def test_a_first_endpoint_and_a_reboot_or_two_are_published_at_once() -> None:
    damper = EndpointDamper(hold_s=5, burst=2)
    assert damper.observe(KEY, A, None, now=0.0)  # the first endpoint is not a move
    assert not damper.observe(KEY, A, A, now=0.5)  # the same: nothing to do
    assert damper.observe(KEY, B, A, now=1.0)  # the NAT rebooted a second later: at once
    assert damper.observe(KEY, C, B, now=2.0)  # and again
    assert not damper.observe(KEY, D, C, now=3.0)  # a third so soon waits...
    assert damper.due(now=5.0) == []
    assert damper.due(now=6.0) == [(KEY, D)]  # ...until its peer has a move again


def test_a_flapping_peer_moves_once_per_hold_and_ends_at_its_newest_endpoint() -> None:
    damper = EndpointDamper(hold_s=5, burst=2)
    published = A
    assert damper.observe(KEY, A, None, now=0.0)
    moves = 0
    for step in range(1, 1001):  # 16 ports, 100 keepalives a second, for 10 s
        now = step / 100
        observed = ("198.51.100.1", 1000 + step % 16)
        if damper.observe(KEY, observed, published, now):
            published, moves = observed, moves + 1
        for _, endpoint in damper.due(now):
            published, moves = endpoint, moves + 1
    assert moves <= 2 + 10 / 5, moves  # the burst, then one per 5 s: not 1,000
    assert damper.damped > 800


def test_a_move_that_comes_back_is_forgotten() -> None:
    damper = EndpointDamper(hold_s=5, burst=1)
    assert damper.observe(KEY, A, None, now=0.0)
    assert damper.observe(KEY, B, A, now=10.0)
    assert not damper.observe(KEY, C, B, now=11.0)  # held
    assert not damper.observe(KEY, B, B, now=12.0)  # back to the published one
    assert damper.due(now=20.0) == []


@given(st.lists(st.tuples(st.integers(0, 3), st.floats(0, 2)), max_size=200))
def test_no_window_holds_more_moves_than_the_burst_and_the_refill(
    steps: list[tuple[int, float]],
) -> None:
    damper, now, published, moves = EndpointDamper(hold_s=5, burst=2), 0.0, None, []
    for port, gap in steps:
        now += gap
        observed = ("198.51.100.1", 1000 + port)
        if damper.observe(KEY, observed, published, now):
            if published is not None:
                moves.append(now)
            published = observed
        for _, endpoint in damper.due(now):
            published = endpoint
            moves.append(now)
    for index, start in enumerate(moves):
        in_window = [moment for moment in moves[index:] if moment - start <= 10]
        assert len(in_window) <= 2 + 10 / 5 + 1e-9, moves
