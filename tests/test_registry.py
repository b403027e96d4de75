"""The registry on a real SQLite file: tokens, joins, addresses, durability and followers."""

from __future__ import annotations

import asyncio
import ipaddress
import stat
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from meshpeer.rendezvous import settings as config
from meshpeer.rendezvous.model import (
    Conflict,
    InvalidInput,
    NotFound,
    Peer,
    TokenRejected,
    parse_routes,
)
from meshpeer.rendezvous.noise import public_bytes
from meshpeer.rendezvous.registry import ADMIN_TOKEN_NAME, DATABASE_NAME, Registry

T = TypeVar("T")
SMALL = config.Overrides(network="10.9.0.0/29", public_endpoint="192.0.2.10:51820")
# 10.9.0.0/29: .1 is the rendezvous, .2 to .6 are for peers, .7 is broadcast.


def run(coroutine: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(_call(coroutine))


async def _call(coroutine: Callable[[], Awaitable[T]]) -> T:
    return await coroutine()


def new_key() -> bytes:
    return public_bytes(X25519PrivateKey.generate())


def test_the_data_folder_is_private_and_keeps_its_key(tmp_path: Path) -> None:
    async def scenario() -> tuple[bytes, bytes]:
        first = await Registry.open(tmp_path / "data", SMALL)
        await first.close()
        again = await Registry.open(tmp_path / "data")
        key = again.public_key
        await again.close()
        return first.public_key, key

    first_key, second_key = run(scenario)
    assert first_key == second_key
    data = tmp_path / "data"
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert stat.S_IMODE((data / DATABASE_NAME).stat().st_mode) == 0o600
    assert stat.S_IMODE((data / ADMIN_TOKEN_NAME).stat().st_mode) == 0o600


def test_settings_given_once_are_kept_for_the_cli(tmp_path: Path) -> None:
    async def scenario() -> config.Settings:
        await (await Registry.open(tmp_path, SMALL)).close()
        registry = await Registry.open(tmp_path)
        await registry.close()
        return registry.settings

    kept = run(scenario)
    assert str(kept.network) == "10.9.0.0/29"
    assert kept.public_endpoint == ("192.0.2.10", 51820)
    assert kept.public_api_url == "http://192.0.2.10:51821"


def test_join_gives_an_address_and_is_durable(tmp_path: Path) -> None:
    key = new_key()

    async def scenario() -> None:
        registry = await Registry.open(tmp_path, SMALL)
        token = await registry.create_token(uses=1, lifetime_s=60)
        registration = await registry.join(token, key, "laptop")
        assert registration.created and registration.credential
        assert registration.peer.address == ipaddress.ip_address("10.9.0.2")
        assert registry.authenticate(registration.credential) == registration.peer
        await registry.close()
        reopened = await Registry.open(tmp_path)
        assert [peer.name for peer in reopened.peers()] == ["laptop"]
        assert reopened.authenticate(registration.credential) is not None
        assert reopened.authenticate("not-a-credential") is None
        await reopened.close()

    run(scenario)


def test_tokens_enforce_uses_expiry_and_revocation(tmp_path: Path) -> None:
    async def scenario() -> None:
        registry = await Registry.open(tmp_path, SMALL)
        twice = await registry.create_token(uses=2, lifetime_s=60)
        await registry.join(twice, new_key(), "one")
        await registry.join(twice, new_key(), "two")
        with pytest.raises(TokenRejected, match="used up"):
            await registry.join(twice, new_key(), "three")

        short = await registry.create_token(uses=5, lifetime_s=10)
        with pytest.raises(TokenRejected, match="expired"):
            await registry.join(short, new_key(), "late", now=time.time() + 11)

        revoked = await registry.create_token(uses=5, lifetime_s=60)
        [*_, newest] = await registry.list_tokens()
        await registry.revoke_token(newest.token_id)
        with pytest.raises(TokenRejected, match="revoked"):
            await registry.join(revoked, new_key(), "four")
        with pytest.raises(NotFound):
            await registry.revoke_token("nosuchtoken")

        other = await Registry.open(tmp_path / "elsewhere", SMALL)
        foreign = await other.create_token(uses=1, lifetime_s=60)
        await other.close()
        with pytest.raises(TokenRejected, match="unknown"):
            await registry.join(foreign, new_key(), "five")
        with pytest.raises(InvalidInput, match="copy it whole"):
            await registry.join(foreign[:-5], new_key(), "six")
        assert [t.uses_left for t in await registry.list_tokens()] == [0, 5, 5]
        await registry.close()

    run(scenario)


def test_a_retried_join_gets_the_same_registration_without_spending_a_use(tmp_path: Path) -> None:
    key = new_key()

    async def scenario() -> None:
        registry = await Registry.open(tmp_path, SMALL)
        token = await registry.create_token(uses=1, lifetime_s=60)
        first = await registry.join(token, key, "laptop")
        again = await registry.join(token, key, "laptop")  # the token is used up by now
        assert not again.created
        assert again.peer.address == first.peer.address
        assert registry.authenticate(first.credential) is None  # replaced
        assert registry.authenticate(again.credential) is not None
        with pytest.raises(Conflict, match="already registered as 'laptop'"):
            await registry.join(token, key, "desktop")
        more = await registry.create_token(uses=1, lifetime_s=60)
        with pytest.raises(Conflict, match="taken"):
            await registry.join(more, new_key(), "laptop")
        await registry.close()

    run(scenario)


def test_bad_keys_and_routes_are_refused(tmp_path: Path) -> None:
    async def scenario() -> None:
        registry = await Registry.open(tmp_path, SMALL)
        token = await registry.create_token(uses=5, lifetime_s=60)
        with pytest.raises(InvalidInput, match="own public key"):
            await registry.join(token, registry.public_key, "mirror")
        with pytest.raises(InvalidInput, match="not a usable X25519 key"):
            await registry.join(token, bytes(32), "zero")  # a low-order point
        routes = parse_routes("192.168.1.0/24", registry.settings.network)
        await registry.join(token, new_key(), "office", routes)
        clash = parse_routes(["192.168.0.0/16"], registry.settings.network)
        with pytest.raises(Conflict, match="advertised by office"):
            await registry.join(token, new_key(), "home", clash)
        await registry.close()

    run(scenario)
    with pytest.raises(InvalidInput, match="overlaps the mesh network"):
        parse_routes(["10.9.0.0/24"], ipaddress.ip_network("10.9.0.0/29"))
    with pytest.raises(InvalidInput, match=r"did you mean 192\.168\.1\.0/24"):
        parse_routes(["192.168.1.5/24"], ipaddress.ip_network("10.9.0.0/29"))


def test_addresses_never_collide_and_come_back_after_removal(tmp_path: Path) -> None:
    async def scenario() -> None:
        registry = await Registry.open(tmp_path, SMALL)
        token = await registry.create_token(uses=10, lifetime_s=60)
        for index in range(5):
            await registry.join(token, new_key(), f"peer{index}")
        assert sorted(str(p.address) for p in registry.peers()) == [
            f"10.9.0.{host}" for host in range(2, 7)
        ]
        with pytest.raises(Conflict, match="full"):
            await registry.join(token, new_key(), "one-too-many")
        removed = await registry.remove_peer("peer2")
        newcomer = await registry.join(token, new_key(), "newcomer")
        assert newcomer.peer.address == removed.address
        with pytest.raises(NotFound):
            await registry.remove_peer("peer2")
        await registry.close()

    run(scenario)


def test_the_network_cannot_move_under_registered_peers(tmp_path: Path) -> None:
    async def scenario() -> None:
        registry = await Registry.open(tmp_path, SMALL)
        await registry.add_peer(new_key(), "phone")
        await registry.close()
        with pytest.raises(InvalidInput, match="remove them first"):
            await Registry.open(tmp_path, config.Overrides(network="10.10.0.0/16"))

    run(scenario)


def test_two_processes_racing_for_a_last_use_one_wins(tmp_path: Path) -> None:
    async def attempt(registry: Registry, token: str, name: str) -> bool:
        try:
            await registry.join(token, new_key(), name)
        except TokenRejected:
            return False
        return True

    async def scenario() -> None:
        server = await Registry.open(tmp_path, SMALL)
        cli = await Registry.open(tmp_path)  # a second connection, as a second process has
        for round_ in range(10):
            token = await server.create_token(uses=1, lifetime_s=60)
            wins = await asyncio.gather(
                attempt(server, token, f"a{round_}"),
                attempt(cli, token, f"b{round_}"),
                attempt(server, token, f"c{round_}"),
            )
            assert sum(wins) == 1, wins
            [winner] = [prefix for prefix, won in zip("abc", wins, strict=True) if won]
            await server.remove_peer(f"{winner}{round_}")
        await cli.close()
        await server.close()

    run(scenario)


def test_the_server_follows_writes_from_other_processes(tmp_path: Path) -> None:
    async def scenario() -> None:
        server = await Registry.open(tmp_path, SMALL)
        server.start_background()
        seen: list[tuple[str, str]] = []
        server.subscribe(lambda kind, peer: seen.append((kind, peer.name)))
        cli = await Registry.open(tmp_path)
        await cli.add_peer(new_key(), "phone")
        await wait_for(lambda: ("added", "phone") in seen)
        await cli.remove_peer("phone")
        await wait_for(lambda: ("removed", "phone") in seen)
        assert server.peers() == []
        await cli.close()
        await server.close()

    run(scenario)


def test_observations_survive_a_restart(tmp_path: Path) -> None:
    key = new_key()
    timestamp = bytes.fromhex("400000006553f1000000000a")

    async def scenario() -> None:
        server = await Registry.open(tmp_path, SMALL)
        server.start_background()
        await server.add_peer(key, "phone")
        server.observe_handshake(key, timestamp, 1000.0)
        server.observe_endpoint(key, ("198.51.100.7", 40001), 1000.5)
        cli = await Registry.open(tmp_path)
        peer = await wait_for_peer(cli, "phone", lambda p: p.endpoint is not None)
        assert peer.endpoint == ("198.51.100.7", 40001)
        await cli.close()
        await server.close()  # flushes the rest
        again = await Registry.open(tmp_path)
        [stored] = again.peers()
        assert stored.handshake_timestamp == timestamp
        assert stored.last_handshake == 1000.0
        assert stored.endpoint_confirmed_at == 1000.5
        await again.close()

    run(scenario)


def test_a_watcher_hears_of_a_change_at_once(tmp_path: Path) -> None:
    async def scenario() -> None:
        server = await Registry.open(tmp_path, SMALL)
        snapshot = await server.watch(None, None, 0)
        assert snapshot.full and snapshot.peers == []
        key = new_key()

        async def register_later() -> float:
            await asyncio.sleep(0.2)
            await server.add_peer(key, "phone")
            return time.monotonic()

        registering = asyncio.create_task(register_later())
        change = await server.watch(snapshot.epoch, snapshot.revision, 5)
        heard = time.monotonic()
        assert not change.full and [p.name for p in change.peers] == ["phone"]
        assert heard - await registering < 0.1
        server.observe_endpoint(key, ("198.51.100.7", 1), 1.0)
        moved = await server.watch(change.epoch, change.revision, 5)
        assert [p.endpoint for p in moved.peers] == [("198.51.100.7", 1)]
        await server.remove_peer("phone")
        gone = await server.watch(moved.epoch, moved.revision, 5)
        assert gone.removed == [key] and gone.peers == []
        stale = await server.watch("another-epoch", 1, 5)
        assert stale.full
        await server.close()

    run(scenario)


async def wait_for(condition: Callable[[], bool], timeout_s: float = 2.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def wait_for_peer(
    registry: Registry, name: str, condition: Callable[[Peer], bool], timeout_s: float = 2.0
) -> Peer:
    deadline = time.monotonic() + timeout_s
    while True:
        await registry.sync()
        fresh = await Registry.open(registry.data_dir)
        peers = {peer.name: peer for peer in fresh.peers()}
        await fresh.close()
        if name in peers and condition(peers[name]):
            return peers[name]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_many_peers_register_in_one_transaction_or_none_do(tmp_path: Path) -> None:
    async def scenario() -> None:
        registry = await Registry.open(tmp_path, SMALL)
        added = await registry.add_peers([(new_key(), "a"), (new_key(), "b")])
        assert [str(peer.address) for peer in added] == ["10.9.0.2", "10.9.0.3"]
        with pytest.raises(Conflict, match="taken"):
            await registry.add_peers([(new_key(), "c"), (new_key(), "a")])
        with pytest.raises(InvalidInput, match="not a usable X25519 key"):
            await registry.add_peers([(new_key(), "d"), (bytes(32), "zero")])
        await registry.close()
        reopened = await Registry.open(tmp_path, SMALL)
        assert sorted(peer.name for peer in reopened.peers()) == ["a", "b"]
        await reopened.close()

    run(scenario)
