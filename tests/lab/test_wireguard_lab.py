"""Real wireguard-go peers punching through the lab's NATs, endpoints learned from a reflector.

Both sides set the other's mapped endpoint with a persistent keepalive, so both send at once:
each side's first packet opens its own NAT for the other's (UDP hole punching, RFC 5128 3.3).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

import pytest

from tests.lab import Lab, NatType, Reflector, Router
from tests.lab.topology import Host
from tests.lab.wait import wait_until
from tests.lab.wireguard import WireGuardGo, learn_mapping

pytestmark = pytest.mark.lab

# wireguard-go retries an unanswered initiation every 5 s (REKEY_TIMEOUT): a punch that has not
# worked after three tries will not; one that works does so on the first or second.
PUNCH_WAIT_S = 15.0
KEEPALIVE_S = 1


def direct_path_expected(a: NatType, b: NatType) -> bool:
    """Theory (RFC 5128 section 3.5): a symmetric NAT's new mapping per destination is only
    reached by a peer whose NAT filters endpoint-independently or by address alone."""
    if NatType.SYMMETRIC not in (a, b):
        return True
    other = b if a is NatType.SYMMETRIC else a
    return other in (NatType.FULL_CONE, NatType.ADDRESS_RESTRICTED)


@dataclass
class Site:
    nat: Router
    host: Host
    wg: WireGuardGo
    mapping: tuple[str, int]


def build_site(lab: Lab, index: int, nat_type: NatType, reflector: Reflector) -> Site:
    nat = lab.add_nat(f"n{index}", nat_type)
    host = nat.add_host(f"peer{index}")
    mapping = learn_mapping(host, 51820, reflector)
    wg = WireGuardGo(host, f"10.77.0.{index}/24").start()
    return Site(nat, host, wg, mapping)


def introduce(a: Site, b: Site) -> None:
    """Each side learns the other's mapped endpoint, as the rendezvous will tell them."""
    a.wg.add_peer(b.wg.public_key, f"{b.wg.interface.ip}/32", b.mapping, KEEPALIVE_S)
    b.wg.add_peer(a.wg.public_key, f"{a.wg.interface.ip}/32", a.mapping, KEEPALIVE_S)


def handshaken(a: Site, b: Site) -> bool:
    return bool(a.wg.latest_handshakes().get(b.wg.public_key)) and bool(
        b.wg.latest_handshakes().get(a.wg.public_key)
    )


def ping_over_tunnel(a: Site, b: Site) -> bool:
    return any(a.host.ping(b.wg.interface.ip) for _ in range(3))


SCENARIOS = [
    (NatType.PORT_RESTRICTED, NatType.PORT_RESTRICTED),
    (NatType.SYMMETRIC, NatType.PORT_RESTRICTED),
    (NatType.FULL_CONE, NatType.SYMMETRIC),
    (NatType.ADDRESS_RESTRICTED, NatType.SYMMETRIC),
]


@pytest.mark.parametrize(
    ("type_a", "type_b"), SCENARIOS, ids=[f"{a.value}-{b.value}" for a, b in SCENARIOS]
)
def test_two_peers_punch_through_as_theory_says(lab: Lab, type_a: NatType, type_b: NatType) -> None:
    reflector = lab.add_public_host("stun").start_reflector()
    a = build_site(lab, 1, type_a, reflector)
    b = build_site(lab, 2, type_b, reflector)
    assert a.mapping[0] == str(a.nat.public_address)

    introduce(a, b)

    if direct_path_expected(type_a, type_b):
        assert wait_until(lambda: handshaken(a, b), PUNCH_WAIT_S), a.wg.show() + b.wg.show()
        assert ping_over_tunnel(a, b) and ping_over_tunnel(b, a)
        # Each side talks to the other's NAT, never to a private address.
        assert a.wg.endpoints()[b.wg.public_key].startswith(f"{b.nat.public_address}:")
    else:
        assert not wait_until(lambda: handshaken(a, b), PUNCH_WAIT_S)
        assert not a.host.ping(b.wg.interface.ip)


def test_connectivity_grid(lab: Lab) -> None:
    """Two peers behind each NAT type, all pairs introduced at once: which pairs go direct."""
    reflector = lab.add_public_host("stun").start_reflector()
    types = [nat_type for nat_type in NatType for _ in range(2)]
    sites = [build_site(lab, i + 1, t, reflector) for i, t in enumerate(types)]
    pairs = list(itertools.combinations(range(len(sites)), 2))
    for i, j in pairs:
        introduce(sites[i], sites[j])
    started = time.monotonic()

    expected = {(i, j): direct_path_expected(types[i], types[j]) for i, j in pairs}
    wait_until(
        lambda: all(handshaken(sites[i], sites[j]) for (i, j), e in expected.items() if e),
        PUNCH_WAIT_S,
    )
    time.sleep(max(0.0, PUNCH_WAIT_S - (time.monotonic() - started)))

    seen = {(i, j): handshaken(sites[i], sites[j]) for i, j in pairs}
    grid = {(types[i].value, types[j].value): seen[i, j] for i, j in pairs}
    assert seen == expected, f"direct paths seen: {grid}"
