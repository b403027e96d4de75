"""mDNS names that were announced and not resolved (a resolve that timed out, or one skipped
while a flood of names filled the resolves in flight) are resolved again when the agent asks
mDNS again: zeroconf tells of a name only once, when its PTR record is new."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest
from zeroconf import ServiceStateChange

from meshpeer.peer import lan
from meshpeer.peer.lan import MAX_PENDING_RESOLVES, LanDiscovery, Sightings

OWN, PEER = bytes([1]) * 32, bytes([2]) * 32
REAL = f"nas.{lan.SERVICE_TYPE}"


ANSWERING: set[str] = set()  # the names the LAN answers a resolve of (none until the test adds)
ASKED: list[str] = []  # every resolve, in order


class Answers:
    """zeroconf's AsyncServiceInfo, answering from ANSWERING."""

    def __init__(self, service_type: str, name: str) -> None:
        self.name = name
        self.properties = {b"pub": base64.b64encode(PEER)}
        self.port = 51820

    async def async_request(self, zc: Any, timeout_ms: int) -> bool:
        ASKED.append(self.name)
        await asyncio.sleep(0.01)
        return self.name in ANSWERING

    def parsed_addresses(self) -> list[str]:
        return ["192.168.1.7"]


class Zeroconf:
    """The few calls `ask_again` makes: an empty cache, and a send that goes nowhere."""

    def __init__(self) -> None:
        self.zeroconf = self
        self.cache = self
        self.sent = 0

    def async_all_by_details(self, *details: object) -> list[object]:
        return []

    def async_send(self, query: object) -> None:
        self.sent += 1


def discovery(found: list[Sightings]) -> LanDiscovery:
    discovered = LanDiscovery(OWN, "me", 51820, ["192.168.1.2"], found.append)
    discovered._zeroconf = Zeroconf()  # type: ignore[assignment]
    return discovered


async def settle(discovered: LanDiscovery) -> None:
    while discovered._resolving:
        await asyncio.gather(*discovered._resolving.values())


@pytest.fixture(autouse=True)
def answers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lan, "AsyncServiceInfo", Answers)
    ANSWERING.clear()
    ASKED.clear()


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
    assert found == [{PEER: [("192.168.1.7", 51820)]}]
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
    assert found == [{PEER: [("192.168.1.7", 51820)]}]


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
