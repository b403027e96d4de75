"""The list of serving instances (issue 18): each stamps its row in the database, and members
hear the live ones, the answering instance first, in the join answer and the watch (whole in a
full answer, in a delta only when it changed), on both engines and through the real API."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from meshpeer.peer.api_decode import watch_answer
from meshpeer.rendezvous import engines
from meshpeer.rendezvous import settings as config
from meshpeer.rendezvous.api import create_app
from meshpeer.rendezvous.registry import ADMIN_TOKEN_NAME, DATABASE_NAME, Registry
from meshpeer.rendezvous.service import Rendezvous
from meshpeer.rendezvous.storage import ServingInstance
from meshpeer.rendezvous.timers import MAX_LISTED_INSTANCES
from tests.joining import Joiner
from tests.pgcluster import Cluster
from tests.postgres import RegistryOpener
from tests.test_api import bearer, make_token
from tests.test_instances import _copy_tls
from tests.test_registry import run, wait_for

FIRST = config.Overrides(
    network="10.9.0.0/24", public_endpoint="192.0.2.10:51820", dns_listen="0.0.0.0:5353"
)
SECOND = config.Overrides(public_endpoint="198.51.100.20:4500", dns_listen="0.0.0.0:53")
FIRST_LISTED = {
    "api_url": "https://192.0.2.10:51821",
    "endpoint": "192.0.2.10:51820",
    "dns": "192.0.2.10:5353",
}
SECOND_LISTED = {
    "api_url": "https://198.51.100.20:51821",
    "endpoint": "198.51.100.20:4500",
    "dns": "198.51.100.20:53",
}
Client = TestClient[Any, Any]


@contextlib.asynccontextmanager
async def serving(registry: Registry) -> AsyncIterator[Client]:
    """The API of a serving instance (its heartbeat and following running)."""
    service = Rendezvous(registry)
    registry.start_background()
    client: Client = TestClient(
        TestServer(create_app(registry, service.snapshot, service.counters))
    )
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()
        await registry.close()


async def _member(client: Client, registry: Registry) -> tuple[dict[str, Any], str]:
    """A peer joined through `client`: the join answer and its credential."""
    admin = (registry.data_dir / ADMIN_TOKEN_NAME).read_text().strip()
    token = await make_token(client, admin)
    joiner = Joiner("laptop")
    answer = await (
        await client.post("/v1/join", json=joiner.body(token, registry.public_key))
    ).json()
    return answer, joiner.credential(answer, registry.public_key)


async def _watch(client: Client, credential: str, query: str = "timeout=0") -> dict[str, Any]:
    answer: dict[str, Any] = await (
        await client.get(f"/v1/watch?{query}", headers=bearer(credential))
    ).json()
    return answer


def test_a_member_hears_of_the_instance_it_joined(
    tmp_path: Path, open_registry: RegistryOpener
) -> None:
    async def scenario() -> None:
        registry = await open_registry(tmp_path, FIRST)
        async with serving(registry) as client:
            joined, credential = await _member(client, registry)
            assert joined["instances"] == [FIRST_LISTED]
            full = await _watch(client, credential)
            assert full["full"] and full["instances"] == [FIRST_LISTED]
            since = f"epoch={full['epoch']}&since={full['revision']}&timeout=0"
            assert "instances" not in await _watch(client, credential, since)  # unchanged
            assert watch_answer(full).full  # an agent of before ignores the new field

    run(scenario)


def test_an_instance_that_starts_or_stops_reaches_the_others_watchers(
    tmp_path: Path, postgres_cluster: Cluster
) -> None:
    async def scenario() -> None:
        url = await postgres_cluster.new_database()
        first = await Registry.open(tmp_path / "first", FIRST, database=url)
        async with serving(first) as client:
            joined, credential = await _member(client, first)
            assert joined["instances"] == [FIRST_LISTED]
            now = await _watch(client, credential)
            since = f"epoch={now['epoch']}&since={now['revision']}&timeout=5"
            waiting = asyncio.create_task(_watch(client, credential, since))
            _copy_tls(tmp_path / "first", tmp_path / "second")
            second = await Registry.open(tmp_path / "second", SECOND, database=url)
            async with serving(second):
                await wait_for(lambda: len(second.instances.listed) == 2)
                await first.instances.beat()  # as its next heartbeat would
                heard = await asyncio.wait_for(waiting, 1.0)
                assert not heard["full"] and heard["peers"] == []
                assert heard["instances"] == [FIRST_LISTED, SECOND_LISTED]
                assert second.instances.to_json() == [SECOND_LISTED, FIRST_LISTED]
            await first.instances.beat()  # the second left the list as it stopped
            later = await _watch(client, credential, f"epoch={now['epoch']}&since=0&timeout=0")
            assert later["instances"] == [FIRST_LISTED]

    run(scenario)


def test_the_list_is_bounded_and_forgets_silent_instances(
    tmp_path: Path, open_registry: RegistryOpener
) -> None:
    """Through the store on both engines: the oldest listed after the caller, at most 16."""

    async def scenario() -> None:
        await (await open_registry(tmp_path, FIRST)).close()
        store = await engines.open_store(tmp_path, open_registry.database(tmp_path))
        others = [_instance(f"other{number:02}") for number in range(MAX_LISTED_INSTANCES + 4)]
        for other in others:
            await store.beat_instance(other, 15.0, MAX_LISTED_INSTANCES)
        own = _instance("own")
        listed = await store.beat_instance(own, 15.0, MAX_LISTED_INSTANCES)
        assert listed == [own, *others[: MAX_LISTED_INSTANCES - 1]]
        await asyncio.sleep(0.3)
        assert await store.beat_instance(own, 0.2, MAX_LISTED_INSTANCES) == [
            own
        ]  # they fell silent
        await store.retire_instance(own.instance_id)
        assert await store.beat_instance(others[0], 0.2, MAX_LISTED_INSTANCES) == [others[0]]
        await store.close()

    run(scenario)


def _instance(name: str) -> ServingInstance:
    return ServingInstance(name, f"https://{name}.example", "192.0.2.1:51820", "192.0.2.1:53")


def test_a_schema_4_folder_gains_the_list_of_instances(tmp_path: Path) -> None:
    async def serve_once() -> list[dict[str, str]]:
        registry = await Registry.open(tmp_path, FIRST)
        await registry.instances.beat()
        await registry.close()
        return registry.instances.to_json()

    run(serve_once)
    with contextlib.closing(sqlite3.connect(tmp_path / DATABASE_NAME)) as db, db:
        db.execute("DROP TABLE instances")
        db.execute("UPDATE meta SET value = '4' WHERE key = 'schema'")
    assert run(serve_once) == [FIRST_LISTED]
    with contextlib.closing(sqlite3.connect(tmp_path / DATABASE_NAME)) as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchall() == [("5",)]
