"""Endpoint damping: a NAT reboot is news at once; a member flapping between ports is not."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from meshpeer.rendezvous.damping import EndpointDamper

KEY = b"k" * 32
A, B, C = ("198.51.100.1", 1000), ("198.51.100.1", 2000), ("198.51.100.1", 3000)


def test_a_first_endpoint_and_a_move_after_a_quiet_spell_are_published_at_once() -> None:
    damper = EndpointDamper(hold_s=5)
    assert damper.observe(KEY, A, None, now=0.0)
    assert not damper.observe(KEY, A, A, now=1.0)  # the same: nothing to do
    assert damper.observe(KEY, B, A, now=60.0)  # a NAT reboot an hour later: at once


def test_a_flapping_peer_moves_once_per_hold_and_ends_at_its_newest_endpoint() -> None:
    damper = EndpointDamper(hold_s=5)
    published = A
    assert damper.observe(KEY, A, None, now=0.0)
    moves = 0
    for step in range(1, 1000):  # 16 ports, 100 keepalives a second, for 10 s
        now = step / 100
        observed = ("198.51.100.1", 1000 + step % 16)
        if damper.observe(KEY, observed, published, now):
            published, moves = observed, moves + 1
        for _, endpoint in damper.due(now):
            published, moves = endpoint, moves + 1
    assert moves <= 2, moves  # at 5 s and at 10 s, not 1,000 times
    assert damper.damped > 800


def test_a_move_that_comes_back_is_forgotten() -> None:
    damper = EndpointDamper(hold_s=5)
    assert damper.observe(KEY, A, None, now=0.0)
    assert damper.observe(KEY, B, A, now=10.0)
    assert not damper.observe(KEY, C, B, now=11.0)  # held
    assert not damper.observe(KEY, B, B, now=12.0)  # back to the published one
    assert damper.due(now=20.0) == []


@given(st.lists(st.tuples(st.integers(0, 3), st.floats(0, 1)), max_size=200))
def test_published_moves_are_at_least_a_hold_apart(steps: list[tuple[int, float]]) -> None:
    damper, now, published, moves = EndpointDamper(hold_s=5), 0.0, None, []
    for port, gap in steps:
        now += gap
        observed = ("198.51.100.1", 1000 + port)
        if damper.observe(KEY, observed, published, now):
            published = observed
            moves.append(now)
        for _, endpoint in damper.due(now):
            published = endpoint
            moves.append(now)
    assert all(later - earlier >= 5 for earlier, later in itertools.pairwise(moves))
