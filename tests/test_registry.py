"""The registry on both engines (a real SQLite file, a real PostgreSQL database): tokens, joins,
addresses, durability and followers. Schema migrations are SQLite's alone."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import sqlite3
import stat
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from meshpeer.common.errors import InvalidInput
from meshpeer.common.proof import JoinRequest, ProofRejected
from meshpeer.rendezvous import settings as config
from meshpeer.rendezvous.model import Conflict, NotFound, Peer, TokenRejected, parse_routes
from meshpeer.rendezvous.noise import public_bytes
from meshpeer.rendezvous.registry import ADMIN_TOKEN_NAME, DATABASE_NAME, Registration, Registry
from tests.joining import Joiner
from tests.postgres import RegistryOpener

T = TypeVar("T")
SMALL = config.Overrides(network="10.9.0.0/29", public_endpoint="192.0.2.10:51820")
# 10.9.0.0/29: .1 is the rendezvous, .2 to .6 are for peers, .7 is broadcast.
SMALL_NET = ipaddress.ip_network("10.9.0.0/29")


def run(coroutine: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(_call(coroutine))


async def _call(coroutine: Callable[[], Awaitable[T]]) -> T:
    return await coroutine()


def new_key() -> bytes:
    return public_bytes(X25519PrivateKey.generate())


async def join(
    registry: Registry,
    token: str,
    who: Joiner | str,
    routes: tuple[object, ...] = (),
    now: float | None = None,
) -> Registration:
    """A join signed by `who` (a new key when given a name), as the agent makes it."""
    joiner = who if isinstance(who, Joiner) else Joiner(who)
    request = joiner.request(token, registry.public_key, tuple(str(route) for route in routes))
    return await registry.join(request, now=now)


def unsigned(token: str, public_key: bytes, name: str) -> JoinRequest:
    return JoinRequest(token, public_key, name, (), 1, bytes(32))


def test_the_data_folder_is_private_and_keeps_its_key(
    tmp_path: Path, open_registry: RegistryOpener
) -> None:
    async def scenario() -> tuple[bytes, bytes]:
        first = await open_registry(tmp_path / "data", SMALL)
        await first.close()
        again = await open_registry(tmp_path / "data")
        key = again.public_key
        await again.close()
        return first.public_key, key

    first_key, second_key = run(scenario)
    assert first_key == second_key
    data = tmp_path / "data"
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    if open_registry.database(data) is None:  # SQLite: the database is a file in the folder
        assert stat.S_IMODE((data / DATABASE_NAME).stat().st_mode) == 0o600
    assert stat.S_IMODE((data / ADMIN_TOKEN_NAME).stat().st_mode) == 0o600


def test_settings_given_once_are_kept_for_the_cli(
    tmp_path: Path, open_registry: RegistryOpener
) -> None:
    async def scenario() -> config.Settings:
        await (await open_registry(tmp_path, SMALL)).close()
        registry = await open_registry(tmp_path)
        await registry.close()
        return registry.settings

    kept = run(scenario)
    assert str(kept.network) == "10.9.0.0/29"
    assert kept.public_endpoint == ("192.0.2.10", 51820)
    assert kept.public_api_url == "https://192.0.2.10:51821"


def test_join_gives_an_address_and_is_durable(
    tmp_path: Path, open_registry: RegistryOpener
) -> None:
    async def scenario() -> None:
        registry = await open_registry(tmp_path, SMALL)
        token = await registry.create_token(uses=1, lifetime_s=60)
        registration = await join(registry, token, "laptop")
        assert registration.created and registration.credential
        assert registration.peer.address == ipaddress.ip_address("10.9.0.2")
        assert registry.authenticate(registration.credential) == registration.peer
        await registry.close()
        reopened = await open_registry(tmp_path)
        assert [peer.name for peer in reopened.peers()] == ["laptop"]
        assert reopened.authenticate(registration.credential) is not None
        assert reopened.authenticate("not-a-credential") is None
        await reopened.close()

    run(scenario)


def test_tokens_enforce_uses_expiry_and_revocation(
    tmp_path: Path, open_registry: RegistryOpener
) -> None:
    async def scenario() -> None:
        registry = await open_registry(tmp_path, SMALL)
        twice = await registry.create_token(uses=2, lifetime_s=60)
        await join(registry, twice, "one")
        await join(registry, twice, "two")
        with pytest.raises(TokenRejected, match="used up"):
            await join(registry, twice, "three")

        short = await registry.create_token(uses=5, lifetime_s=10)
        with pytest.raises(TokenRejected, match="expired"):
            await join(registry, short, "late", now=time.time() + 11)

        revoked = await registry.create_token(uses=5, lifetime_s=60)
        [*_, newest] = await registry.list_tokens()
        await registry.revoke_token(newest.token_id)
        with pytest.raises(TokenRejected, match="revoked"):
            await join(registry, revoked, "four")
        with pytest.raises(NotFound):
            await registry.revoke_token("nosuchtoken")

        other = await open_registry(tmp_path / "elsewhere", SMALL)
        foreign = await other.create_token(uses=1, lifetime_s=60)
        await other.close()
        with pytest.raises(TokenRejected, match="unknown"):
            await join(registry, foreign, "five")
        with pytest.raises(InvalidInput, match="copy it whole"):
            await join(registry, foreign[:-5], "six")
        assert [t.uses_left for t in await registry.list_tokens()] == [0, 5, 5]
        await registry.close()

    run(scenario)


def test_a_retried_join_gets_the_same_registration_without_spending_a_use(
    tmp_path: Path, open_registry: RegistryOpener
) -> None:
    laptop = Joiner("laptop")

    async def scenario() -> None:
        registry = await open_registry(tmp_path, SMALL)
        token = await registry.create_token(uses=1, lifetime_s=60)
        first = await join(registry, token, laptop)
        again = await join(registry, token, laptop)  # the token is used up by now
        assert not again.created
        assert again.peer.address == first.peer.address
        assert registry.authenticate(first.credential) is None  # replaced
        assert registry.authenticate(again.credential) is not None
        with pytest.raises(Conflict, match="already registered as 'laptop'"):
            await join(registry, token, Joiner("desktop", laptop.private_key))
        more = await registry.create_token(uses=1, lifetime_s=60)
        with pytest.raises(Conflict, match="taken"):
            await join(registry, more, "laptop")
        await registry.close()

    run(scenario)


def test_bad_keys_and_routes_are_refused(tmp_path: Path, open_registry: RegistryOpener) -> None:
    async def scenario() -> None:
        registry = await open_registry(tmp_path, SMALL)
        token = await registry.create_token(uses=5, lifetime_s=60)
        with pytest.raises(InvalidInput, match="own public key"):
            await registry.join(unsigned(token, registry.public_key, "mirror"))
        with pytest.raises(InvalidInput, match="not a usable X25519 key"):
            await registry.join(unsigned(token, bytes(32), "zero"))  # a low-order point
        token = await registry.create_token(5, 60, parse_routes("192.168.0.0/16", SMALL_NET))
        routes = parse_routes("192.168.1.0/24", registry.settings.network)
        await join(registry, token, "office", routes)
        clash = parse_routes(["192.168.0.0/16"], registry.settings.network)
        with pytest.raises(Conflict, match="advertised by office"):
            await join(registry, token, "home", clash)
        await registry.close()

    run(scenario)
    with pytest.raises(InvalidInput, match="overlaps the mesh network"):
        parse_routes(["10.9.0.0/24"], ipaddress.ip_network("10.9.0.0/29"))
    with pytest.raises(InvalidInput, match=r"did you mean 192\.168\.1\.0/24"):
        parse_routes(["192.168.1.5/24"], ipaddress.ip_network("10.9.0.0/29"))


def test_addresses_never_collide_and_come_back_after_removal(
    tmp_path: Path, open_registry: RegistryOpener
) -> None:
    async def scenario() -> None:
        registry = await open_registry(tmp_path, SMALL)
        token = await registry.create_token(uses=10, lifetime_s=60)
        for index in range(5):
            await join(registry, token, f"peer{index}")
        assert sorted(str(p.address) for p in registry.peers()) == [
            f"10.9.0.{host}" for host in range(2, 7)
        ]
        with pytest.raises(Conflict, match="full"):
            await join(registry, token, "one-too-many")
        removed = await registry.remove_peer("peer2")
        newcomer = await join(registry, token, "newcomer")
        assert newcomer.peer.address == removed.address
        with pytest.raises(NotFound):
            await registry.remove_peer("peer2")
        await registry.close()

    run(scenario)


def test_the_network_cannot_move_under_registered_peers(
    tmp_path: Path, open_registry: RegistryOpener
) -> None:
    async def scenario() -> None:
        registry = await open_registry(tmp_path, SMALL)
        await registry.add_peer(new_key(), "phone")
        await registry.close()
        with pytest.raises(InvalidInput, match="remove them first"):
            await open_registry(tmp_path, config.Overrides(network="10.10.0.0/16"))

    run(scenario)


def test_two_processes_racing_for_a_last_use_one_wins(
    tmp_path: Path, open_registry: RegistryOpener
) -> None:
    async def attempt(registry: Registry, token: str, name: str) -> bool:
        try:
            await join(registry, token, name)
        except TokenRejected:
            return False
        return True

    async def scenario() -> None:
        server = await open_registry(tmp_path, SMALL)
        cli = await open_registry(tmp_path)  # a second connection, as a second process has
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


def test_two_processes_joining_at_once_never_share_an_address(
    tmp_path: Path, open_registry: RegistryOpener
) -> None:
    """Each process's allocator starts from the same next address; the store decides."""

    async def scenario() -> None:
        server = await open_registry(tmp_path, SMALL)
        cli = await open_registry(tmp_path)
        token = await server.create_token(uses=5, lifetime_s=60)
        joined = await asyncio.gather(
            *(
                join(registry, token, f"p{index}")
                for index, registry in enumerate([server, cli] * 2)
            )
        )
        assert len({registration.peer.address for registration in joined}) == 4
        await cli.close()
        await server.close()

    run(scenario)


def test_the_server_follows_writes_from_other_processes(
    tmp_path: Path, open_registry: RegistryOpener
) -> None:
    async def scenario() -> None:
        server = await open_registry(tmp_path, SMALL)
        server.start_background()
        seen: list[tuple[str, str]] = []
        server.subscribe(lambda kind, peer: seen.append((kind, peer.name)))
        cli = await open_registry(tmp_path)
        await cli.add_peer(new_key(), "phone")
        await wait_for(lambda: ("added", "phone") in seen)
        laptop = await cli.add_peer(new_key(), "laptop")
        await wait_for(lambda: ("added", "laptop") in seen)
        phone = cli.find("phone")
        await cli.set_relay_partners(laptop, (phone.public_key,))  # as another instance would
        await wait_for(lambda: server.find("laptop").relay_partners == (phone.public_key,))
        await cli.remove_peer("laptop")
        await cli.remove_peer("phone")
        await wait_for(lambda: ("removed", "phone") in seen)
        assert server.peers() == []
        await cli.close()
        await server.close()

    run(scenario)


def test_observations_survive_a_restart(tmp_path: Path, open_registry: RegistryOpener) -> None:
    key = new_key()
    timestamp = bytes.fromhex("400000006553f1000000000a")

    async def scenario() -> None:
        server = await open_registry(tmp_path, SMALL)
        server.start_background()
        await server.add_peer(key, "phone")
        server.observe_handshake(key, timestamp, 1000.0)
        server.observe_endpoint(key, ("198.51.100.7", 40001), 1000.5)
        cli = await open_registry(tmp_path)
        peer = await wait_for_peer(open_registry, cli, "phone", lambda p: p.endpoint is not None)
        assert peer.endpoint == ("198.51.100.7", 40001)
        await cli.close()
        await server.close()  # flushes the rest
        again = await open_registry(tmp_path)
        [stored] = again.peers()
        assert stored.handshake_timestamp == timestamp
        assert stored.last_handshake == 1000.0
        assert stored.endpoint_confirmed_at == 1000.5
        await again.close()

    run(scenario)


def test_a_watcher_hears_of_a_change_at_once(tmp_path: Path, open_registry: RegistryOpener) -> None:
    async def scenario() -> None:
        server = await open_registry(tmp_path, SMALL)
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
    open_registry: RegistryOpener,
    registry: Registry,
    name: str,
    condition: Callable[[Peer], bool],
    timeout_s: float = 2.0,
) -> Peer:
    deadline = time.monotonic() + timeout_s
    while True:
        await registry.sync()
        fresh = await open_registry(registry.data_dir)
        peers = {peer.name: peer for peer in fresh.peers()}
        await fresh.close()
        if name in peers and condition(peers[name]):
            return peers[name]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_many_peers_register_in_one_transaction_or_none_do(
    tmp_path: Path, open_registry: RegistryOpener
) -> None:
    async def scenario() -> None:
        registry = await open_registry(tmp_path, SMALL)
        added = await registry.add_peers([(new_key(), "a"), (new_key(), "b")])
        assert [str(peer.address) for peer in added] == ["10.9.0.2", "10.9.0.3"]
        with pytest.raises(Conflict, match="taken"):
            await registry.add_peers([(new_key(), "c"), (new_key(), "a")])
        with pytest.raises(InvalidInput, match="not a usable X25519 key"):
            await registry.add_peers([(new_key(), "d"), (bytes(32), "zero")])
        await registry.close()
        reopened = await open_registry(tmp_path, SMALL)
        assert sorted(peer.name for peer in reopened.peers()) == ["a", "b"]
        await reopened.close()

    run(scenario)


# -- trust: only the key holder is the peer; routes are granted, not claimed ---------------------


def test_a_join_not_signed_by_the_key_it_names_gets_nothing_and_changes_nothing(
    tmp_path: Path, open_registry: RegistryOpener
) -> None:
    """The re-join takeover: the victim's key and name are public (TXT, /v1/peers), and the
    attacker holds a token, even a used-up one."""
    victim = Joiner("laptop")

    async def scenario() -> None:
        registry = await open_registry(tmp_path, SMALL)
        token = await registry.create_token(uses=1, lifetime_s=60)
        registered = await join(registry, token, victim)
        attacker = Joiner("laptop")  # another private key
        forged = attacker.request(token, registry.public_key, ("192.168.1.0/24",))
        forged = replace(forged, public_key=victim.public_key)
        with pytest.raises(ProofRejected, match="not signed"):
            await registry.join(forged)
        fresh = await registry.create_token(uses=5, lifetime_s=60)
        with pytest.raises(ProofRejected, match="not signed"):
            await registry.join(replace(forged, token=fresh))
        assert registry.authenticate(registered.credential) == registered.peer
        assert registry.peer(victim.public_key) == registered.peer
        await registry.close()

    run(scenario)


def test_a_replayed_join_is_refused(tmp_path: Path, open_registry: RegistryOpener) -> None:
    victim = Joiner("laptop")

    async def scenario() -> None:
        registry = await open_registry(tmp_path, SMALL)
        token = await registry.create_token(uses=2, lifetime_s=60)
        request = victim.request(token, registry.public_key)
        registered = await registry.join(request)
        with pytest.raises(ProofRejected, match="not newer"):
            await registry.join(request)
        assert registry.authenticate(registered.credential) is not None
        await registry.close()

    run(scenario)


def test_a_used_up_token_does_nothing(tmp_path: Path, open_registry: RegistryOpener) -> None:
    first, second = Joiner("first"), Joiner("second")

    async def scenario() -> None:
        registry = await open_registry(tmp_path, SMALL)
        spent = await registry.create_token(uses=1, lifetime_s=60)
        await join(registry, spent, first)
        with pytest.raises(TokenRejected, match="used up"):
            await join(registry, spent, "newcomer")
        other = await registry.create_token(uses=1, lifetime_s=60)
        await join(registry, other, second)
        # The key that joined with `spent` may retry with it (a lost answer); no other key may.
        await join(registry, spent, first)
        with pytest.raises(TokenRejected, match="used up"):
            await join(registry, spent, second)
        await registry.close()

    run(scenario)


def test_routes_are_granted_by_the_operator_not_claimed(
    tmp_path: Path, open_registry: RegistryOpener
) -> None:
    office, laptop = Joiner("office"), Joiner("laptop")

    async def scenario() -> None:
        registry = await open_registry(tmp_path, SMALL)
        plain = await registry.create_token(uses=5, lifetime_s=60)
        claimed = await join(registry, plain, laptop, ("192.168.1.0/24", "198.18.0.0/15"))
        assert claimed.peer.routes == ()
        assert [str(r) for r in claimed.peer.pending_routes] == ["192.168.1.0/24", "198.18.0.0/15"]
        assert "pending_routes" not in claimed.peer.to_json()  # members never see requests

        grant = parse_routes("192.168.0.0/16", SMALL_NET)
        granting = await registry.create_token(uses=1, lifetime_s=60, allowed_routes=grant)
        joined = await join(registry, granting, office, ("192.168.1.0/24", "172.16.0.0/12"))
        assert [str(r) for r in joined.peer.routes] == ["192.168.1.0/24"]
        assert [str(r) for r in joined.peer.pending_routes] == ["172.16.0.0/12"]

        approved = await registry.grant_routes("office")
        assert [str(r) for r in approved.routes] == ["192.168.1.0/24", "172.16.0.0/12"]
        assert approved.pending_routes == ()
        revoked = await registry.revoke_routes("office", parse_routes("172.16.0.0/12", SMALL_NET))
        assert [str(r) for r in revoked.routes] == ["192.168.1.0/24"]
        again = await join(registry, granting, office, ("192.168.1.0/24", "10.200.0.0/16"))
        assert [str(r) for r in again.peer.routes] == ["192.168.1.0/24"]  # kept, not re-claimed
        assert [str(r) for r in again.peer.pending_routes] == ["10.200.0.0/16"]
        await registry.close()

    run(scenario)


@pytest.mark.parametrize(
    ("route", "words"),
    [
        ("0.0.0.0/0", "default route"),
        ("::/0", "default route"),
        ("128.0.0.0/1", "link-local"),  # half the internet: the route hijack of issue 12
        ("64.0.0.0/2", "loopback"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("fe80::/64", "link-local"),
        ("224.0.0.0/4", "multicast"),
        ("10.0.0.0/8", "mesh network"),
        ("192.0.2.0/24", "rendezvous's address 192.0.2.10"),
    ],
)
def test_routes_that_take_traffic_nobody_gave_are_refused(route: str, words: str) -> None:
    settings = config.resolve(SMALL)
    with pytest.raises(InvalidInput, match=words):
        parse_routes(route, settings.network, settings.own_addresses)


def test_routes_claimed_before_grants_existed_become_requests(tmp_path: Path) -> None:
    """A data folder of schema 1, whose peers' routes were merely claimed."""
    victim = Joiner("old")

    async def scenario() -> None:
        registry = await Registry.open(tmp_path, SMALL)
        token = await registry.create_token(5, 60, parse_routes("192.168.0.0/16", SMALL_NET))
        await join(registry, token, victim, ("192.168.7.0/24",))
        await registry.close()
        _downgrade_to_schema_1(tmp_path / DATABASE_NAME)
        upgraded = await Registry.open(tmp_path)
        peer = upgraded.find("old")
        assert peer.routes == () and [str(r) for r in peer.pending_routes] == ["192.168.7.0/24"]
        await upgraded.close()

    run(scenario)


def _downgrade_to_schema_1(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        for table, column in [
            ("peers", "pending_routes"),
            ("peers", "token_id"),
            ("peers", "last_join_ms"),
            ("tokens", "allowed_routes"),
            ("tokens", "label"),
            ("peers", "relay_partners"),
            ("peers", "lan_endpoints"),
        ]:
            db.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
        db.execute("UPDATE meta SET value = '1' WHERE key = 'schema'")


def test_a_schema_2_folder_gains_relay_partners_and_keeps_its_peers(tmp_path: Path) -> None:
    async def scenario() -> None:
        registry = await Registry.open(tmp_path, SMALL)
        laptop = await registry.add_peer(new_key(), "laptop")
        await registry.close()
        with contextlib.closing(sqlite3.connect(tmp_path / DATABASE_NAME)) as db, db:
            db.execute("ALTER TABLE peers DROP COLUMN relay_partners")
            db.execute("ALTER TABLE peers DROP COLUMN lan_endpoints")
            db.execute("UPDATE meta SET value = '2' WHERE key = 'schema'")
        registry = await Registry.open(tmp_path)
        try:
            assert registry.find("laptop") == laptop and laptop.relay_partners == ()
            other = await registry.add_peer(new_key(), "phone")
            changed = await registry.set_relay_partners(laptop, (other.public_key,))
            assert changed.relay_partners == (other.public_key,)
        finally:
            await registry.close()

    run(scenario)


def test_relay_partners_are_registered_peers_and_survive_a_restart(
    tmp_path: Path, open_registry: RegistryOpener
) -> None:
    async def scenario() -> None:
        registry = await open_registry(tmp_path, SMALL)
        laptop = await registry.add_peer(new_key(), "laptop")
        phone = await registry.add_peer(new_key(), "phone")
        partners = (phone.public_key, new_key(), laptop.public_key)
        changed = await registry.set_relay_partners(laptop, partners)
        assert changed.relay_partners == (phone.public_key,)
        await registry.close()
        registry = await open_registry(tmp_path)
        try:
            stored = registry.find("laptop")
            assert stored.relay_partners == (phone.public_key,)
            assert stored.to_json()["relay_partners"] == [phone.public_key_b64]
        finally:
            await registry.close()

    run(scenario)
