"""An outside review of the direct try's answer at once and its LAN try set again
(peer/paths.py), and of mDNS names resolved again (peer/lan.py): what a neighbour on the LAN
or the peer's own traffic can make of them."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from zeroconf import ServiceStateChange

from meshpeer.peer import lan
from meshpeer.peer.discovery import sighted
from meshpeer.peer.lan import MAX_PENDING_RESOLVES, MAX_SERVICE_NAMES, LanDiscovery, Sightings
from meshpeer.peer.timers import DIRECT_TRY_S, LAN_TRY_EVERY_S

from .test_lan_upgrade import OWN_PUBLIC_SAME_NAT, PEER, PEER_LAN, PUBLIC, public_path_mesh

# -- paths.py: a LAN try that WireGuard roamed back from ---------------------------------------


def test_a_packet_on_the_public_path_is_no_answer_from_a_lan_try_set_again() -> None:
    # Behind one NAT, the peer reported a LAN endpoint that does not work from here (another
    # VLAN, or a neighbour that took its address on ours, sighted by anyone). One packet of
    # the peer's on the public path during the try roams WireGuard back; the try is set again,
    # and that packet's bytes were counted as the LAN's answer: a second kick at once, and at
    # the try's end the dead LAN was kept ("it answered"), the path `lan`, until our traffic
    # stalled or the peer sent again (an idle pair: up to its next keepalive, 25 s).
    mesh, wire = public_path_mesh(OWN_PUBLIC_SAME_NAT, (PEER_LAN,))
    mesh.merge(sighted("lan", {PEER: [PEER_LAN]}))
    wire.apply(mesh, 102.0)
    assert wire.endpoint == PEER_LAN
    wire.endpoint, wire.rx = PUBLIC, wire.rx + 100  # a ping's reply, on the public path
    kicks = 0
    for tick in range(1, 4 * int(DIRECT_TRY_S) + 1):  # the rest of the try, and its end
        for config in mesh.plan(wire.status(), 102.0 + tick / 4).set_peers:
            kicks += config.kick and config.endpoint == PEER_LAN
            wire.endpoint = config.endpoint or wire.endpoint
    assert kicks == 1, kicks  # the try set again, once: nothing came from the LAN
    assert wire.endpoint == PUBLIC and mesh.path(PEER) == "direct"


@given(st.lists(st.booleans(), min_size=4 * 180, max_size=4 * 180))
@settings(max_examples=50, deadline=None)
def test_a_dead_lan_endpoint_holds_a_live_public_path_at_most_one_try_a_minute(
    sends: list[bool],
) -> None:
    # test_lan_upgrade's property test runs a pair whose peer is not behind our NAT, where no
    # LAN try ever starts (paths.lan_to_try): it cannot see the tries. Here the peer is behind
    # our NAT, its reported LAN endpoint is sighted and dead, and it sends on the public path
    # at any quarter second (WireGuard roams back there). Each try costs DIRECT_TRY_S and the
    # round that notices, once a minute.
    mesh, wire = public_path_mesh(OWN_PUBLIC_SAME_NAT, (PEER_LAN,))
    mesh.merge(sighted("lan", {PEER: [PEER_LAN]}))
    off: list[float] = []
    for tick, peer_sends in enumerate(sends):
        now = 102.0 + tick / 4
        wire.handshake = 100.5 + 120 * ((now - 100) // 120)  # WireGuard rekeys
        wire.apply(mesh, now)
        if peer_sends:
            wire.endpoint, wire.rx = PUBLIC, wire.rx + 100
        if wire.endpoint != PUBLIC:
            off.append(now)
    for start in off:
        window = [at for at in off if start <= at < start + LAN_TRY_EVERY_S]
        assert len(window) <= 4 * (DIRECT_TRY_S + 1), (start, window)


# -- lan.py: mDNS names resolved again -----------------------------------------------------------

REAL = f"nas.{lan.SERVICE_TYPE}"
ANSWERING: set[str] = set()  # the names the LAN answers a resolve of
ASKED: list[str] = []  # every resolve, in order
HELD: dict[str, asyncio.Event] = {}  # resolves that run until the test lets them time out


class Answers:
    """zeroconf's AsyncServiceInfo: answers the names in ANSWERING, times out on the others
    (at once, or when HELD lets them: a resolve takes MDNS_RESOLVE_TIMEOUT_S, 3 s)."""

    def __init__(self, service_type: str, name: str) -> None:
        self.name = name
        self.properties = {b"pub": base64.b64encode(PEER)}
        self.port = 51820

    async def async_request(self, zc: Any, timeout_ms: int) -> bool:
        ASKED.append(self.name)
        held = HELD.get(self.name)
        await (held.wait() if held else asyncio.sleep(0.01))
        return self.name in ANSWERING

    def parsed_addresses(self) -> list[str]:
        return ["192.168.7.3"]


class Zeroconf:
    """The few calls `ask_again` and `stop` make."""

    def __init__(self) -> None:
        self.zeroconf = self.cache = self

    def async_all_by_details(self, *details: object) -> list[object]:
        return []

    def async_send(self, query: object) -> None:
        pass

    async def async_unregister_all_services(self) -> None:
        pass

    async def async_close(self) -> None:
        pass


@pytest.fixture(autouse=True)
def answers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lan, "AsyncServiceInfo", Answers)
    ANSWERING.clear()
    ASKED.clear()
    HELD.clear()


def discovery(found: list[Sightings]) -> LanDiscovery:
    discovered = LanDiscovery(bytes([1]) * 32, "me", 51820, ["192.168.7.2"], found.append)
    discovered._zeroconf = Zeroconf()  # type: ignore[assignment]
    return discovered


def announce(discovered: LanDiscovery, *names: str) -> None:
    for name in names:
        discovered._on_service_state_change(None, "", name, ServiceStateChange.Added)


async def settle(discovered: LanDiscovery) -> None:
    """Until every resolve is over and gone from `_resolving` (none may be HELD)."""
    while discovered._resolving:
        await asyncio.gather(*discovered._resolving.values(), return_exceptions=True)
        await asyncio.sleep(0)  # their done callbacks, which take them out


def junk(count: int, start: int = 0) -> list[str]:
    return [f"junk{n}.{lan.SERVICE_TYPE}" for n in range(start, start + count)]


def test_resolves_held_in_flight_by_a_neighbour_do_not_starve_a_name_resolved_again() -> None:
    # The peer's name was announced and its resolve timed out (multicast lost, say). Now a
    # neighbour keeps every resolve in flight: a few new names (or records changed under its
    # old ones) every MDNS_RESOLVE_TIMEOUT_S, each resolve running its 3 s, is all it takes.
    # ask_again gave up on the whole list whenever MAX_PENDING_RESOLVES were in flight, so
    # at every question: the peer's name was never asked about again, however many questions.
    found: list[Sightings] = []

    async def scenario() -> None:
        discovered = discovery(found)
        announce(discovered, REAL)
        await settle(discovered)
        assert found == [] and REAL in discovered._unresolved
        flood = junk(MAX_PENDING_RESOLVES)
        HELD.update({name: asyncio.Event() for name in flood})
        announce(discovered, *flood)
        ANSWERING.add(REAL)
        for _ in range(3):
            discovered.ask_again()
            await asyncio.sleep(0.05)
        assert len(discovered._resolving) <= 2 * MAX_PENDING_RESOLVES  # still bounded
        for held in HELD.values():
            held.set()
        await settle(discovered)

    asyncio.run(scenario())
    assert found == [{PEER: [("192.168.7.3", 51820)]}]


def test_a_one_time_flood_of_names_does_not_shut_the_real_name_out_for_good() -> None:
    # MAX_SERVICE_NAMES names announced once (one burst of PTR records with a long TTL: no
    # goodbye ever comes) that never answer filled `_unresolved`, which took no name after
    # that: the peer's name, announced later and timed out once, was never resolved again.
    found: list[Sightings] = []

    async def scenario() -> int:
        discovered = discovery(found)
        for start in range(0, MAX_SERVICE_NAMES, MAX_PENDING_RESOLVES):
            announce(discovered, *junk(MAX_PENDING_RESOLVES, start))
            await settle(discovered)
        announce(discovered, REAL)
        await settle(discovered)  # timed out, once
        ANSWERING.add(REAL)
        questions = 0
        while not found and questions < 20:
            discovered.ask_again()
            questions += 1
            await settle(discovered)
        assert len(discovered._unresolved) <= MAX_SERVICE_NAMES
        return questions

    assert asyncio.run(scenario()) <= 2
    assert found == [{PEER: [("192.168.7.3", 51820)]}]


def test_a_name_whose_goodbye_comes_during_its_resolve_is_not_sighted() -> None:
    # A goodbye (TTL 0) for a name whose resolve runs: the answer that comes in after it is
    # of a service that is gone, and nothing would take the sighting away again.
    found: list[Sightings] = []

    async def scenario() -> None:
        discovered = discovery(found)
        HELD[REAL] = asyncio.Event()
        ANSWERING.add(REAL)
        announce(discovered, REAL)
        await asyncio.sleep(0.01)
        discovered._on_service_state_change(None, "", REAL, ServiceStateChange.Removed)
        HELD[REAL].set()
        await settle(discovered)
        assert REAL not in discovered._sightings and REAL not in discovered._unresolved

    asyncio.run(scenario())
    assert found == []


def test_no_resolve_starts_once_mdns_is_stopped() -> None:
    # stop() cancels the resolves in flight, then awaits the browser and zeroconf: an event
    # zeroconf delivers meanwhile, or an ask_again, started resolves on a closed zeroconf
    # that nothing cancelled.
    async def scenario() -> None:
        discovered = discovery([])
        HELD[REAL] = asyncio.Event()
        announce(discovered, REAL)
        await asyncio.sleep(0.01)
        await discovered.stop()
        announce(discovered, *junk(2))
        discovered.ask_again()
        await asyncio.sleep(0.05)
        assert not [task for task in discovered._resolving.values() if not task.done()]
        HELD[REAL].set()

    asyncio.run(scenario())
    assert ASKED == [REAL]  # the one before the stop
