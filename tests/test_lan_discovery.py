"""mDNS names that were announced and not resolved (a resolve that timed out, or one skipped
while a flood of names filled the resolves in flight) are resolved again when the agent asks
mDNS again: zeroconf tells of a name only once, when its PTR record is new. Then what a
neighbour on the LAN can make of that (an outside review): bounded tables, no starvation by a
burst of names, goodbyes and stops that leave nothing behind."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from zeroconf import ServiceStateChange

from meshpeer.peer import lan
from meshpeer.peer.lan import MAX_PENDING_RESOLVES, MAX_SERVICE_NAMES, LanDiscovery, Sightings

PEER = bytes([2]) * 32

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


def rename(number: int) -> str:
    """zeroconf's rename of the peer "nas", whose name was taken: "nas-2", "nas-3", ..."""
    return f"nas-{number}.{lan.SERVICE_TYPE}"


async def expecting_nas(found: list[Sightings], *names: str, answering: str) -> LanDiscovery:
    """Discovery expecting the peer "nas": `names` announced, each timed out once, and the
    one `answering` answers from now on."""
    discovered = discovery(found)
    discovered.expect(["nas"])
    announce(discovered, *names)
    await settle(discovered)
    ANSWERING.add(answering)
    return discovered


async def renamed_peer(found: list[Sightings]) -> LanDiscovery:
    """... whose service goes by "nas-2": its name was taken."""
    return await expecting_nas(found, rename(2), answering=rename(2))


class Flood:
    """A neighbour announcing ever new names that never answer (`name` of a number)."""

    def __init__(self, discovered: LanDiscovery, name: Callable[[int], str], first: int) -> None:
        self.discovered, self.name, self.next = discovered, name, first

    async def send(self, count: int, burst: int = MAX_PENDING_RESOLVES) -> None:
        """`count` new names, `burst` at a time, each burst's resolves over before the next."""
        for _ in range(0, count, burst):
            numbers = range(self.next, self.next + burst)
            self.next += burst
            announce(self.discovered, *[self.name(number) for number in numbers])
            await settle(self.discovered)


async def questions_until_found(
    discovered: LanDiscovery,
    found: list[Sightings],
    most: int,
    before_each: Callable[[], Awaitable[None]] | None = None,
) -> int:
    """Ask again until the peer is sighted, at most `most` times, with `before_each` (a
    neighbour's announcements) ahead of every question: how many questions it took."""
    questions = 0
    while not found and questions < most:
        if before_each is not None:
            await before_each()
        discovered.ask_again()
        questions += 1
        await settle(discovered)
    return questions


def test_a_name_whose_resolve_timed_out_is_resolved_when_mdns_is_asked_again() -> None:
    found: list[Sightings] = []

    async def scenario() -> None:
        discovered = discovery(found)
        discovered._on_service_state_change(None, "", REAL, ServiceStateChange.Added)
        await settle(discovered)
        assert found == []  # timed out: before, nothing ever tried it again
        ANSWERING.add(REAL)
        discovered.ask_again()
        await settle(discovered)
        discovered.ask_again()  # resolved: not asked about again
        await settle(discovered)

    asyncio.run(scenario())
    assert found == [{PEER: [("192.168.7.3", 51820)]}]
    assert ASKED == [REAL, REAL]


def test_a_name_skipped_in_a_flood_gets_its_turn_at_a_later_question() -> None:
    found: list[Sightings] = []
    flood = [f"junk{n}.{lan.SERVICE_TYPE}" for n in range(2 * MAX_PENDING_RESOLVES)]

    async def scenario() -> int:
        discovered = discovery(found)
        for name in [*flood, REAL]:
            discovered._on_service_state_change(None, "", name, ServiceStateChange.Added)
        assert REAL not in discovered._resolving  # the flood holds every resolve
        ANSWERING.add(REAL)
        await settle(discovered)
        questions = 0
        while not found and questions < 10:
            discovered.ask_again()  # each one tries the next names, not the same first ones
            questions += 1
            await settle(discovered)
        return questions

    assert asyncio.run(scenario()) <= 3
    assert found == [{PEER: [("192.168.7.3", 51820)]}]


def test_a_name_that_goes_away_is_not_resolved_again() -> None:
    async def scenario() -> None:
        discovered = discovery([])
        discovered._on_service_state_change(None, "", REAL, ServiceStateChange.Added)
        await settle(discovered)
        discovered._on_service_state_change(None, "", REAL, ServiceStateChange.Removed)
        discovered.ask_again()
        await settle(discovered)

    asyncio.run(scenario())
    assert ASKED == [REAL]


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


def test_names_that_keep_coming_after_an_expected_peers_cannot_starve_it() -> None:
    # The peer's name timed out once; a neighbour then announces a table's worth of new names
    # before every question, each never answering. A full table dropped the peer's name (it
    # had failed as often, and was the oldest), and by failures, then newest first, the new
    # names took every retry: the peer the rendezvous says is on our LAN was never asked
    # about again. It goes first now, and a full table keeps it.
    found: list[Sightings] = []

    async def scenario() -> int:
        discovered = discovery(found)
        discovered.expect(["NAS"])  # mDNS compares names without case
        announce(discovered, REAL)
        await settle(discovered)
        ANSWERING.add(REAL)
        flood = Flood(discovered, lambda n: f"junk{n}.{lan.SERVICE_TYPE}", 0)
        return await questions_until_found(
            discovered, found, 5, lambda: flood.send(MAX_SERVICE_NAMES)
        )

    assert asyncio.run(scenario()) == 1
    assert found == [{PEER: [("192.168.7.3", 51820)]}]


def test_case_variants_of_an_expected_name_take_one_place_in_the_table() -> None:
    # mDNS compares names without case (zeroconf too), but any neighbour can send a TXT or SRV
    # record under any spelling, and zeroconf hands its name over as spelled: an Updated event.
    # Each spelling of an expected peer's name was its own entry, and each was kept by a full
    # table: 256 spellings of "livingroom" (none answering) filled it for good, and a name
    # announced after them (another peer's, or the expected peer's renamed one) never got a
    # place, nor a second resolve once its first timed out.
    found: list[Sightings] = []
    spellings = [
        "".join(c.upper() if n >> i & 1 else c for i, c in enumerate("livingroom"))
        for n in range(1, MAX_SERVICE_NAMES + 1)
    ]
    garage = f"garage.{lan.SERVICE_TYPE}"

    async def scenario() -> int:
        discovered = discovery(found)
        discovered.expect(["livingroom"])
        for spelling in spellings:
            name = f"{spelling}.{lan.SERVICE_TYPE}"
            discovered._on_service_state_change(None, "", name, ServiceStateChange.Updated)
            await settle(discovered)
        announce(discovered, garage)
        await settle(discovered)  # timed out once
        ANSWERING.add(garage)
        return await questions_until_found(discovered, found, 5)

    assert asyncio.run(scenario()) == 1
    assert found == [{PEER: [("192.168.7.3", 51820)]}]


def test_the_peer_is_expected_by_its_rename_when_a_neighbour_took_its_name() -> None:
    # zeroconf renames a service whose name is in its cache already (allow_name_change):
    # "nas" becomes "nas-2". Anyone who announces "nas" before the peer's mDNS starts (every
    # roam restarts it) makes it so, and expect(["nas"]) protected the squatter's name (first
    # at every question, never dropped), while the peer's real "nas-2" was starved by a flood
    # exactly as before expect() existed (an outside review; 5 questions, not found). A
    # rename of an expected name is expected too.
    found: list[Sightings] = []

    async def scenario() -> int:
        # The squatter's "nas", then the peer's "nas-2".
        discovered = await expecting_nas(found, REAL, rename(2), answering=rename(2))
        flood = Flood(discovered, lambda n: f"junk{n}.{lan.SERVICE_TYPE}", 0)
        return await questions_until_found(
            discovered, found, 5, lambda: flood.send(MAX_SERVICE_NAMES)
        )

    assert asyncio.run(scenario()) == 1


def test_made_up_renames_of_an_expected_name_never_hold_the_whole_table() -> None:
    # Renames count as the expected peer's, and anyone can announce "nas-3", "nas-4", ...: past
    # MAX_PROTECTED_NAMES of them a full table drops them as any other name, and retries the
    # oldest expected ones first (the peer's own rename, made before the flood of others).
    found: list[Sightings] = []
    printer = f"printer.{lan.SERVICE_TYPE}"

    async def scenario() -> int:
        discovered = await renamed_peer(found)
        await Flood(discovered, rename, 3).send(MAX_SERVICE_NAMES)
        announce(discovered, printer)
        await settle(discovered)
        assert printer in discovered._unresolved  # a full table made room for it
        assert len(discovered._unresolved) <= MAX_SERVICE_NAMES
        discovered.ask_again()
        await settle(discovered)
        return len(found)

    assert asyncio.run(scenario()) == 1
    assert found == [{PEER: [("192.168.7.3", 51820)]}]


def test_renames_made_up_after_the_peers_failed_rename_cannot_starve_it() -> None:
    # The peer goes by "nas-2" (a neighbour holds "nas") and its resolve timed out once (a
    # multicast answer lost on Wi-Fi). Before every question the neighbour then announces
    # 2 * MAX_PENDING_RESOLVES new renames "nas-N" that never answer: the first ones' resolves
    # fill the slots for events, so the others were never tried. By failures first, those
    # untried renames took every retry ahead of the peer's, at every question: expected
    # names went by fewest failures, and a made-up name has none until it is tried.
    found: list[Sightings] = []

    async def scenario() -> int:
        discovered = await renamed_peer(found)
        flood = Flood(discovered, rename, 3)

        async def made_up() -> None:
            assert len(discovered._unresolved) <= MAX_SERVICE_NAMES
            await flood.send(2 * MAX_PENDING_RESOLVES, burst=2 * MAX_PENDING_RESOLVES)

        return await questions_until_found(discovered, found, 10, made_up)

    assert asyncio.run(scenario()) <= 2
    assert found == [{PEER: [("192.168.7.3", 51820)]}]


def test_made_up_renames_of_one_expected_peer_leave_other_names_their_retries() -> None:
    # Sixteen renames of an expected peer that never answer came first at every question and
    # took the whole retry budget: a name of no expected peer, timed out once, was never
    # resolved again (an outside review).
    found: list[Sightings] = []
    other = f"tv.{lan.SERVICE_TYPE}"

    async def scenario() -> int:
        discovered = await expecting_nas(found, other, answering=other)
        await Flood(discovered, rename, 2).send(
            2 * MAX_PENDING_RESOLVES, burst=2 * MAX_PENDING_RESOLVES
        )
        return await questions_until_found(discovered, found, 5)

    assert asyncio.run(scenario()) == 1
    assert found == [{PEER: [("192.168.7.3", 51820)]}]
