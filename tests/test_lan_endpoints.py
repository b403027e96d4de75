"""LAN endpoints a peer reports of itself (PUT /v1/lan): checked, bounded, rationed, stored
across restarts and schema upgrades, and listed to every other peer."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest

from meshpeer.common.endpoints import lan_endpoints
from meshpeer.common.errors import InvalidInput
from meshpeer.peer.lanreport import LanReport
from meshpeer.peer.timers import LAN_REPORT_RETRY_S
from meshpeer.rendezvous import timers
from meshpeer.rendezvous.model import Rationed
from meshpeer.rendezvous.peerindex import ChangeKind
from meshpeer.rendezvous.registry import DATABASE_NAME, Registry
from tests.joining import Joiner
from tests.test_api import Client, api, bearer, make_token
from tests.test_api import run as run_api
from tests.test_registry import SMALL, new_key, run

WIRE_AND_WIFI = ["192.168.1.5:51820", "10.0.0.7:51820"]


async def joined(client: Client, admin: str, rendezvous_key: bytes, name: str) -> str:
    """A new peer's credential."""
    joiner = Joiner(name)
    token = await make_token(client, admin)
    answer = await client.post("/v1/join", json=joiner.body(token, rendezvous_key))
    return joiner.credential(await answer.json(), rendezvous_key)


def test_a_peer_reports_its_lan_endpoints_and_every_peer_sees_them(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with api(tmp_path) as (client, service, admin):
            key = service.registry.public_key
            laptop = await joined(client, admin, key, "laptop")
            phone = await joined(client, admin, key, "phone")
            body = {"endpoints": [*WIRE_AND_WIFI[:1], *WIRE_AND_WIFI]}  # one twice: kept once
            answer = await client.put("/v1/lan", json=body, headers=bearer(laptop))
            assert answer.status == 400  # three items are more than two, twice or not
            body = {"endpoints": WIRE_AND_WIFI}
            answer = await client.put("/v1/lan", json=body, headers=bearer(laptop))
            assert answer.status == 200, await answer.text()
            assert await answer.json() == {"endpoints": WIRE_AND_WIFI}
            listed = await client.get("/v1/peers", headers=bearer(phone))
            by_name = {peer["name"]: peer for peer in await listed.json()}
            assert by_name["laptop"]["lan_endpoints"] == WIRE_AND_WIFI
            assert by_name["phone"]["lan_endpoints"] == []
            watched = await client.get("/v1/watch?timeout=0", headers=bearer(phone))
            by_name = {peer["name"]: peer for peer in (await watched.json())["peers"]}
            assert by_name["laptop"]["lan_endpoints"] == WIRE_AND_WIFI
            nobody = await client.put("/v1/lan", json=body, headers=bearer("nonsense"))
            assert nobody.status == 401

    run_api(scenario)


BAD_LISTS: list[object] = [
    "192.168.1.5:51820",  # not a list
    ["192.168.1.5:51820", "192.168.1.6:51820", "192.168.1.7:51820"],  # more than two
    ["127.0.0.1:51820"],  # loopback: the receiver's own host
    ["169.254.1.1:51820"],  # link-local
    ["224.0.0.251:5353"],  # multicast
    ["255.255.255.255:51820"],  # broadcast (240/4)
    ["0.0.0.1:51820"],  # 'this network'
    ["[fd00::1]:51820"],  # IPv6: mDNS announces IPv4 here
    ["192.168.1.5:0"],
    ["192.168.1.5:65536"],
    ["192.168.1.5"],
    ["host.example:51820"],  # never a name (something might resolve it)
    ["192.168.1.5:51820\nendpoint=1.2.3.4:5"],
    [{"ip": "192.168.1.5"}],
    [None],
]


def test_lan_endpoints_are_unicast_ipv4_and_at_most_two(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with api(tmp_path) as (client, service, admin):
            laptop = await joined(client, admin, service.registry.public_key, "laptop")
            for bad in [*BAD_LISTS, None]:
                answer = await client.put(
                    "/v1/lan", json={"endpoints": bad}, headers=bearer(laptop)
                )
                assert answer.status == 400, (bad, await answer.text())
                assert "error" in await answer.json()
            assert service.registry.find("laptop").lan_endpoints == ()

    run_api(scenario)


@pytest.mark.parametrize("bad", BAD_LISTS)
def test_the_shared_check_refuses_what_the_api_refuses(bad: object) -> None:
    with pytest.raises(InvalidInput):
        lan_endpoints(bad)


def test_changing_lan_endpoints_is_rationed_and_the_same_list_writes_nothing(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        registry = await Registry.open(tmp_path, SMALL)
        laptop = await registry.add_peer(new_key(), "laptop")
        changes: list[ChangeKind] = []
        registry.subscribe(lambda kind, peer: changes.append(kind))
        try:
            wire = lan_endpoints(WIRE_AND_WIFI[:1])
            laptop = await registry.set_lan_endpoints(laptop, wire)
            for _ in range(20):  # the same list, as an agent says it at every start
                laptop = await registry.set_lan_endpoints(laptop, wire)
            assert len(changes) == 1
            refused = 0
            for flip in range(40):  # a flood of different lists from one credential
                endpoints = lan_endpoints([f"192.168.1.{10 + flip}:51820"])
                try:
                    laptop = await registry.set_lan_endpoints(laptop, endpoints)
                except Rationed as error:  # HTTP 429 at the API
                    assert error.retry_after_s > 0
                    refused += 1
            assert refused >= 40 - timers.RELAY_CHANGES_BURST
            assert len(changes) <= 1 + timers.RELAY_CHANGES_BURST, changes
        finally:
            await registry.close()

    run(scenario)


def test_a_rationed_change_is_a_429_with_retry_after(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with api(tmp_path) as (client, service, admin):
            laptop = await joined(client, admin, service.registry.public_key, "laptop")
            statuses = []
            for flip in range(8):
                body = {"endpoints": [f"192.168.1.{10 + flip}:51820"]}
                answer = await client.put("/v1/lan", json=body, headers=bearer(laptop))
                statuses.append(answer.status)
            assert statuses[0] == 200 and statuses[-1] == 429, statuses
            assert int(answer.headers["Retry-After"]) >= 1

    run_api(scenario)


def test_lan_endpoints_survive_a_restart(tmp_path: Path) -> None:
    async def scenario() -> None:
        registry = await Registry.open(tmp_path, SMALL)
        laptop = await registry.add_peer(new_key(), "laptop")
        await registry.set_lan_endpoints(laptop, lan_endpoints(WIRE_AND_WIFI))
        await registry.close()
        registry = await Registry.open(tmp_path)
        try:
            stored = registry.find("laptop")
            assert stored.lan_endpoints == (("192.168.1.5", 51820), ("10.0.0.7", 51820))
            assert stored.to_json()["lan_endpoints"] == WIRE_AND_WIFI
        finally:
            await registry.close()

    run(scenario)


def test_another_process_s_change_reaches_the_serving_one(tmp_path: Path) -> None:
    async def scenario() -> None:
        server = await Registry.open(tmp_path, SMALL)
        laptop = await server.add_peer(new_key(), "laptop")
        other = await Registry.open(tmp_path)
        try:
            await other.set_lan_endpoints(laptop, lan_endpoints(WIRE_AND_WIFI[:1]))
            await server.sync()
            assert server.find("laptop").lan_endpoints == (("192.168.1.5", 51820),)
        finally:
            await other.close()
            await server.close()

    run(scenario)


def test_a_schema_3_folder_gains_lan_endpoints_and_keeps_its_peers(tmp_path: Path) -> None:
    async def scenario() -> None:
        registry = await Registry.open(tmp_path, SMALL)
        laptop = await registry.add_peer(new_key(), "laptop")
        await registry.close()
        with contextlib.closing(sqlite3.connect(tmp_path / DATABASE_NAME)) as db, db:
            db.execute("ALTER TABLE peers DROP COLUMN lan_endpoints")
            db.execute("UPDATE meta SET value = '3' WHERE key = 'schema'")
        registry = await Registry.open(tmp_path)
        try:
            assert registry.find("laptop") == laptop and laptop.lan_endpoints == ()
            changed = await registry.set_lan_endpoints(laptop, lan_endpoints(WIRE_AND_WIFI))
            assert changed.lan_endpoints == lan_endpoints(WIRE_AND_WIFI)
        finally:
            await registry.close()

    run(scenario)


def test_the_agent_reports_what_mdns_announces_once_and_again_only_when_it_changes() -> None:
    report = LanReport()
    assert report.due(0.0) is None  # mDNS has not chosen its addresses yet
    report.want(
        ["127.0.0.1", "169.254.3.3", "192.168.1.5", "192.168.1.5", "10.0.0.7", "10.9.9.9"], 51820
    )
    assert report.due(0.0) == (("192.168.1.5", 51820), ("10.0.0.7", 51820))
    report.failed(0.0)  # refused (429) or unreachable: not before LAN_REPORT_RETRY_S
    assert report.due(LAN_REPORT_RETRY_S - 0.1) is None
    wanted = report.due(LAN_REPORT_RETRY_S)
    assert wanted is not None
    report.told(wanted)
    assert report.due(100.0) is None  # held: nothing to say
    report.want(["192.168.2.9"], 51820)  # moved to another LAN
    assert report.due(100.0) == (("192.168.2.9", 51820),)
    report.want([], 51820)  # no LAN at all: say so, or the old address stays listed
    assert report.due(100.0) == ()
