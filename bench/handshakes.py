"""Handshakes a second that the rendezvous responder core completes on one core.

    .venv/bin/python bench/handshakes.py [--peers N] [--rounds R]

Initiations from N distinct peers are made first; only the responder's work is timed (parse,
mac1, three X25519 exchanges plus one key generation, the AEADs and KDFs, the response). The
crypto floor is the time of those four X25519 operations alone, measured in the same run.
Figures are medians of R rounds; the machine is shared, so read ratios, not absolutes.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from meshpeer.rendezvous.handshake import Responder
from meshpeer.rendezvous.initiator import Initiator


def one_round(peers: int) -> tuple[float, float]:
    responder = Responder(X25519PrivateKey.generate(), initiations_per_s_under_load=10**9)
    initiators = [
        Initiator(X25519PrivateKey.generate(), responder.public_key) for _ in range(peers)
    ]
    for initiator in initiators:
        responder.authorize(initiator.public_key)
    initiations = [initiator.initiation() for initiator in initiators]
    started = time.perf_counter()
    for number, initiation in enumerate(initiations):
        responder.receive_datagram(initiation, ("198.51.100.1", 1024 + number), 0.0)
    responder.datagrams_to_send()
    elapsed = time.perf_counter() - started
    if responder.counts["handshakes"] != peers:  # a benchmark of failures would mean nothing
        raise SystemExit(f"only {responder.counts['handshakes']} handshakes: {responder.drops}")
    return peers / elapsed, elapsed / peers


def crypto_floor(samples: int) -> float:
    """Seconds for one key generation and three exchanges: what a handshake cannot go below."""
    ours, theirs = X25519PrivateKey.generate(), X25519PrivateKey.generate().public_key()
    started = time.perf_counter()
    for _ in range(samples):
        X25519PrivateKey.generate().exchange(theirs)
        ours.exchange(theirs)
        ours.exchange(theirs)
    return (time.perf_counter() - started) / samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    rates, costs, floors = [], [], []
    for _ in range(args.rounds):
        rate, cost = one_round(args.peers)
        rates.append(rate)
        costs.append(cost)
        floors.append(crypto_floor(args.peers))
    cost, floor = statistics.median(costs), statistics.median(floors)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; pinned to one core"
    )
    print(
        f"handshakes/s: median {statistics.median(rates):.0f} "
        f"(min {min(rates):.0f}, max {max(rates):.0f}) over {args.rounds} rounds of {args.peers}"
    )
    print(
        f"per handshake: {cost * 1e6:.0f} us; X25519 floor {floor * 1e6:.0f} us; "
        f"ratio {cost / floor:.2f}"
    )


if __name__ == "__main__":
    main()
