"""The PostgreSQL engine's own promises, on the private cluster (tests/postgres.py): changes
commit in the order of their numbers, allocators take turns, and `--database` mistakes are one
line, never a password."""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path

import pytest

from meshpeer.common.endpoints import IPAddress
from meshpeer.common.errors import InvalidInput
from meshpeer.rendezvous import pgschema
from meshpeer.rendezvous import settings as config
from meshpeer.rendezvous.model import Peer
from meshpeer.rendezvous.pgstore import PgStore, PgTransaction
from meshpeer.rendezvous.registry import Registry
from tests.pgcluster import Cluster
from tests.test_rendezvous_cli import assert_one_line_error, rendezvous

SERVED = config.Overrides(public_endpoint="192.0.2.10:51820", network="10.9.0.0/29")
PASSWORD = "hunter2-not-shown"  # noqa: S105 (a test's fake password, checked to stay hidden)


def test_a_later_change_never_commits_before_an_earlier_one(postgres_cluster: Cluster) -> None:
    """A follower that saw change n must have seen every change before it (registry.sync):
    the second writer waits for the first to commit before it takes its number."""

    async def scenario() -> None:
        url = await postgres_cluster.new_database()
        first, second = await PgStore.open(url), await PgStore.open(url)
        try:
            async with first.transaction() as db:
                await db._log_change(b"a" * 32)
                racing = asyncio.create_task(_log_one(second, b"b" * 32))
                await asyncio.sleep(0.2)
                assert not racing.done(), "a second change was numbered while the first was open"
                assert await second.changes_since(0) == []
            await racing
            assert await second.changes_since(0) == [(1, b"a" * 32), (2, b"b" * 32)]
            assert await second.commit_marker() == await second.latest_change() == 2
        finally:
            await first.close()
            await second.close()

    asyncio.run(scenario())


async def _log_one(store: PgStore, public_key: bytes) -> None:
    async with store.transaction() as db:
        await db._log_change(public_key)


def test_a_flushs_moves_are_numbered_in_order_by_one_update_of_the_clock(
    postgres_cluster: Cluster,
) -> None:
    """One update of the clock row per flush, not per move: every update of that row within a
    transaction made the next one slower (pgschema.LOG_CHANGES), so a flush of n moves cost
    O(n^2) and a 100,000-peer start timed out (bench/scale.py)."""
    keys = [bytes([number]) * 32 for number in range(1, 6)]

    async def scenario() -> None:
        url = await postgres_cluster.new_database()
        store = await PgStore.open(url)
        try:
            async with store.transaction() as db:
                store.network_id = await db.add_network("10.9.0.0/29", "mesh.internal.")
                db.network_id = store.network_id
                for number, key in enumerate(keys, start=2):
                    await db.insert_peer(Peer(key, f"p{number}", _address(number)), 0.0)
            moved = [_moved_to(key, 40000 + number) for number, key in enumerate(keys[::-1])]
            async with store.transaction() as db:
                before = await _clock_updates(db)
                await db.write_observations(moved, moved)
                assert await _clock_updates(db) - before == 1
            assert await store.changes_since(5) == [
                (6 + n, p.public_key) for n, p in enumerate(moved)
            ]
            assert await store.latest_change() == 10
            stored = await store.stored_peer(keys[0])
            assert stored is not None and stored.peer.endpoint == ("198.51.100.7", 40004)
        finally:
            await store.close()

    asyncio.run(scenario())


async def _clock_updates(db: PgTransaction) -> int:
    """This connection's updates of the clock row (PostgreSQL counts them until it is idle)."""
    query = "SELECT n_tup_upd FROM pg_stat_xact_user_tables WHERE relname = 'change_clock'"
    return int(await db._db.fetchval(query))


def _address(number: int) -> IPAddress:
    return ipaddress.ip_address(f"10.9.0.{number}")


def _moved_to(key: bytes, port: int) -> Peer:
    address = _address(key[0] + 1)
    return Peer(
        key, f"p{key[0] + 1}", address, endpoint=("198.51.100.7", port), endpoint_confirmed_at=1.0
    )


def test_an_address_is_chosen_only_once_the_last_choice_committed(
    postgres_cluster: Cluster,
) -> None:
    """Two instances' allocators ask about the same address: the second waits for the first's
    insert to commit and is told the address is taken (not a unique violation at insert)."""
    address = ipaddress.ip_address("10.9.0.2")

    async def scenario() -> None:
        url = await postgres_cluster.new_database()
        first, second = await PgStore.open(url), await PgStore.open(url)
        try:
            async with first.transaction() as db:
                first.network_id = await db.add_network("10.9.0.0/29", "mesh.internal.")
            second.network_id = first.network_id
            async with first.transaction() as db:
                assert not await db.address_taken(address)
                await db.insert_peer(Peer(b"a" * 32, "a", address), 0.0)
                asking = asyncio.create_task(_address_taken(second, address))
                await asyncio.sleep(0.2)
                assert not asking.done(), "a second allocator chose while the first was open"
            assert await asking
        finally:
            await first.close()
            await second.close()

    asyncio.run(scenario())


async def _address_taken(store: PgStore, address: IPAddress) -> bool:
    async with store.transaction() as db:
        return await db.address_taken(address)


def test_a_database_of_a_newer_rendezvous_is_refused(
    tmp_path: Path, postgres_cluster: Cluster
) -> None:
    async def scenario() -> None:
        url = await _served_on_postgres(tmp_path, postgres_cluster)
        store = await PgStore.open(url)
        async with store.transaction() as db:
            await db.set_meta("schema", str(pgschema.SCHEMA_VERSION + 1))
        await store.close()
        with pytest.raises(InvalidInput, match="newer rendezvous"):
            await Registry.open(tmp_path, database=url)

    asyncio.run(scenario())


def test_the_admin_commands_use_the_database_from_the_environment(
    tmp_path: Path, postgres_cluster: Cluster
) -> None:
    url = asyncio.run(_served_on_postgres(tmp_path, postgres_cluster))
    env = {"RENDEZVOUS_DATABASE": url}
    created = rendezvous("token", "create", "--data-dir", str(tmp_path), env=env)
    assert created.returncode == 0, created.stderr
    listed = rendezvous("token", "list", "--data-dir", str(tmp_path), "--json", env=env)
    assert listed.returncode == 0 and '"uses_left": 1' in listed.stdout, listed
    assert not (tmp_path / "rendezvous.sqlite3").exists()


async def _served_on_postgres(data_dir: Path, cluster: Cluster) -> str:
    url = await cluster.new_database()
    registry = await Registry.open(data_dir, SERVED, store=False, database=url)
    await registry.keep_settings()
    await registry.close()
    return url


def test_a_database_never_served_says_so(tmp_path: Path, postgres_cluster: Cluster) -> None:
    url = asyncio.run(postgres_cluster.new_database())
    result = rendezvous("peers", "--data-dir", str(tmp_path), "--database", url)
    assert_one_line_error(result, 2, "has never served")


@pytest.mark.parametrize(
    ("database", "code", "words"),
    [
        (f"mysql://admin:{PASSWORD}@db.example/registry", 2, "must be a postgresql://"),
        (f"postgresql://admin:{PASSWORD}@[db/registry", 2, "is not a URL"),
        (f"postgresql://admin:{PASSWORD}@db:port/registry", 2, "not a usable URL"),
        (f"postgresql://meshpeer:{PASSWORD}@127.0.0.1:1/registry", 1, "cannot reach PostgreSQL"),
    ],
)
def test_a_bad_or_unreachable_database_is_one_line_without_its_password(
    tmp_path: Path, database: str, code: int, words: str
) -> None:
    for command in (["serve", "--public-endpoint", "192.0.2.10:51820"], ["peers"]):
        result = rendezvous(*command, "--data-dir", str(tmp_path), "--database", database)
        assert_one_line_error(result, code, words)
        assert PASSWORD not in result.stderr + result.stdout


def test_a_database_that_does_not_exist_is_the_users_mistake(
    tmp_path: Path, postgres_cluster: Cluster
) -> None:
    missing = postgres_cluster.url("no_such_registry")
    result = rendezvous("peers", "--data-dir", str(tmp_path), "--database", missing)
    assert_one_line_error(result, 2, "does not exist")
