"""What an attacker tries on the registry is refused: grants, replays, old tokens and credentials.

Each test states what README's security model promises and fails while the promise is broken.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from meshpeer.common import tokens
from meshpeer.common.errors import InvalidInput
from meshpeer.common.keys import encode_key
from meshpeer.rendezvous import settings as config
from meshpeer.rendezvous.model import TokenRejected, parse_routes
from meshpeer.rendezvous.registry import DATABASE_NAME, Registry
from tests.joining import Joiner
from tests.postgres import RegistryOpener
from tests.test_registry import SMALL, SMALL_NET, _downgrade_to_schema_1, join, run


@contextlib.asynccontextmanager
async def opened(
    open_registry: RegistryOpener | None, data_dir: Path, given: config.Overrides | None = None
) -> AsyncIterator[Registry]:
    """Closed even when an assertion fails: a left-open aiosqlite thread hangs pytest's exit.
    `open_registry` None: SQLite (the tests of its migrations)."""
    if open_registry is None:
        registry = await Registry.open(data_dir, given)
    else:
        registry = await open_registry(data_dir, given)
    try:
        yield registry
    finally:
        await registry.close()


def test_a_route_the_operator_revoked_does_not_come_back_with_a_used_up_token(
    tmp_path: Path, open_registry: RegistryOpener
) -> None:
    """README: a token holder cannot "change anything with a used-up ... token", and the
    operator can "revoke routes". A rejoin with the spent token re-grants the revoked route."""
    office = Joiner("office")

    async def scenario() -> None:
        async with opened(open_registry, tmp_path, SMALL) as registry:
            grant = parse_routes("192.168.0.0/16", SMALL_NET)
            token = await registry.create_token(uses=1, lifetime_s=3600, allowed_routes=grant)
            joined = await join(registry, token, office, ("192.168.1.0/24",))
            assert [str(r) for r in joined.peer.routes] == ["192.168.1.0/24"]
            revoked = await registry.revoke_routes(
                "office", parse_routes("192.168.1.0/24", SMALL_NET)
            )
            assert revoked.routes == ()
            # The token is used up; the peer asks again for what the operator just took away.
            again = await join(registry, token, office, ("192.168.1.0/24",))
            assert again.peer.routes == (), "the operator's revocation was undone by a rejoin"

    run(scenario)


def test_a_member_cannot_take_a_tokens_grant_without_spending_its_use(
    tmp_path: Path, open_registry: RegistryOpener
) -> None:
    """A one-use token with --allow-routes is meant for one new machine (the office router).
    A registered member that learns it rejoins with it: it gets the grant, the token keeps its
    use, and the router the token was made for is then refused (its route is taken)."""
    member = Joiner("member")

    async def scenario() -> None:
        async with opened(open_registry, tmp_path, SMALL) as registry:
            plain = await registry.create_token(uses=1, lifetime_s=3600)
            await join(registry, plain, member)
            grant = parse_routes("192.168.1.0/24", SMALL_NET)
            for_router = await registry.create_token(uses=1, lifetime_s=3600, allowed_routes=grant)
            stolen = await join(registry, for_router, member, ("192.168.1.0/24",))
            [listed] = [t for t in await registry.list_tokens() if t.allowed_routes]
            # Either the rejoin spends the use, or it does not get the grant.
            assert listed.uses_left == 0 or stolen.peer.routes == (), (
                f"member took {stolen.peer.routes} and the token still has {listed.uses_left} use"
            )

    run(scenario)


def test_a_captured_join_does_not_bring_back_a_removed_peer(
    tmp_path: Path, open_registry: RegistryOpener
) -> None:
    """README: a replayed join is refused. Once the operator removes a peer its replay floor
    goes with it, so a captured join body (a TLS proxy's log, say) re-registers the removed
    key and spends a use of the token."""
    victim = Joiner("laptop")

    async def scenario() -> None:
        async with opened(open_registry, tmp_path, SMALL) as registry:
            token = await registry.create_token(uses=3, lifetime_s=3600)
            captured = victim.request(token, registry.public_key)
            await registry.join(captured)
            await registry.remove_peer("laptop")
            with contextlib.suppress(Exception):
                await registry.join(captured)  # the replay, days later
            assert registry.peer(victim.public_key) is None, "the replay re-registered the peer"

    run(scenario)


def test_credentials_issued_before_the_upgrade_stop_working(tmp_path: Path) -> None:
    """Schema 1 credentials were handed out in clear JSON (plain HTTP before the API spoke
    TLS, and unsealed through any proxy). The agent refuses its old membership and must join
    again, but the rendezvous keeps the old credential valid after the migration: whoever
    captured it can still list the mesh, watch it, or DELETE /v1/self the victim."""
    victim = Joiner("old")

    async def scenario() -> None:
        async with opened(None, tmp_path, SMALL) as registry:
            token = await registry.create_token(uses=1, lifetime_s=3600)
            old_credential = (await join(registry, token, victim)).credential
        _downgrade_to_schema_1(tmp_path / DATABASE_NAME)
        async with opened(None, tmp_path) as upgraded:
            assert upgraded.authenticate(old_credential) is None, (
                "a schema-1 credential still works"
            )

    run(scenario)


@pytest.mark.parametrize(
    "route",
    [
        "::ffff:127.0.0.0/104",  # IPv4-mapped loopback
        "::ffff:169.254.0.0/112",  # IPv4-mapped link-local
        "::ffff:0:0/96",  # all of IPv4, mapped
        "2002:7f00::/24",  # 6to4 of 127.0.0.0/8
        "64:ff9b::/96",  # NAT64: all of IPv4 again
    ],
)
def test_ipv4_space_in_ipv6_clothing_is_refused_like_the_ipv4_space(route: str) -> None:
    """Loopback, link-local and "all of IPv4" are refused as IPv4 routes even with a grant;
    the same space spelled as IPv6 passes the check."""
    settings = config.resolve(SMALL)
    with pytest.raises(InvalidInput):
        parse_routes(route, settings.network, settings.own_addresses)


def test_a_damaged_token_is_a_one_line_error_not_a_crash() -> None:
    """A join token is attacker-controlled input at the API; 1500 nested brackets inside the
    base64 make json.loads raise RecursionError, which escapes decode() (500 at /v1/join,
    a traceback and exit 1 from `meshpeer run`)."""
    nested = tokens._b64url(b"[" * 1500)
    with pytest.raises(InvalidInput):
        tokens.decode(tokens.PREFIX + nested)


def test_a_revoked_token_changes_nothing(tmp_path: Path, open_registry: RegistryOpener) -> None:
    """(Holds.) A key that joined with a token cannot rejoin with it once revoked."""
    peer = Joiner("peer")

    async def scenario() -> None:
        async with opened(open_registry, tmp_path, SMALL) as registry:
            token = await registry.create_token(uses=1, lifetime_s=3600)
            await join(registry, token, peer)
            [listed] = await registry.list_tokens()
            await registry.revoke_token(listed.token_id)
            with pytest.raises(TokenRejected, match="revoked"):
                await join(registry, token, peer)

    run(scenario)


def test_a_token_from_before_tls_cannot_be_rewrapped_as_mp2(tmp_path: Path) -> None:
    """README: "Tokens made before TLS (mp1_...) are refused". Only the prefix is refused: an
    mp1 token is the same JSON with the same secret, so anyone holding one (it crossed plain
    HTTP in every join body) re-encodes it as mp2_ and joins with its remaining uses after the
    upgrade."""
    newcomer = Joiner("newcomer")

    async def scenario() -> None:
        async with opened(None, tmp_path, SMALL) as registry:
            issued = tokens.decode(await registry.create_token(uses=5, lifetime_s=86_400))
        _downgrade_to_schema_1(tmp_path / DATABASE_NAME)  # the token dates from schema 1
        payload = {
            "api": issued.api_url.replace("https://", "http://"),
            "secret": tokens._b64url(issued.secret),
            "key": encode_key(issued.rendezvous_key),
        }
        mp1 = "mp1_" + tokens._b64url(json.dumps(payload).encode())
        with pytest.raises(InvalidInput, match="before the API used TLS"):
            tokens.decode(mp1)
        # The attacker reads the secret out of the mp1 JSON and wraps it anew.
        inside = json.loads(tokens._unb64url(mp1[len("mp1_") :]))
        secret = tokens._unb64url(inside["secret"])
        rewrapped = tokens.JoinToken(issued.api_url, secret, issued.rendezvous_key, None).encode()
        async with opened(None, tmp_path) as upgraded:
            with pytest.raises(TokenRejected):
                await join(upgraded, rewrapped, newcomer)

    run(scenario)


def test_a_default_route_in_pieces_is_refused_like_a_default_route(
    tmp_path: Path, open_registry: RegistryOpener
) -> None:
    """README: no peer carries "a default route ... even with an operator's grant", and
    128.0.0.0/1 (issue 12) is refused only because it happens to cover link-local space.
    49 CIDRs (under MAX_ROUTES) that skip each forbidden space cover 86% of IPv4; a peer asks
    for them, and `peer routes approve NAME` (no list: all it asked for) grants them all."""
    everything = [ipaddress.ip_network("0.0.0.0/0")]
    for hole in ("0.0.0.0/8", "10.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/3"):
        cut = ipaddress.ip_network(hole)
        everything = [
            piece
            for network in everything
            for piece in (
                network.address_exclude(cut) if cut.subnet_of(network) else [network]  # type: ignore[arg-type]
            )
        ]
    everything = [n for n in everything if ipaddress.ip_address("192.0.2.10") not in n]
    greedy = Joiner("greedy")

    async def scenario() -> None:
        async with opened(open_registry, tmp_path, SMALL) as registry:
            token = await registry.create_token(uses=1, lifetime_s=3600)
            try:
                await join(registry, token, greedy, tuple(str(n) for n in everything))
                carried = (await registry.grant_routes("greedy")).routes  # approve, no list
            except InvalidInput:
                return  # refused: what README promises
            covered = sum(route.num_addresses for route in carried)
            assert covered < 2**31, f"{len(carried)} routes carry {covered / 2**32:.0%} of IPv4"

    run(scenario)
