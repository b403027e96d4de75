"""The HTTP API over a real socket: the join flow, the watch, admin calls and hostile input."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshpeer.common.keys import encode_key
from meshpeer.rendezvous import settings as config
from meshpeer.rendezvous.api import create_app
from meshpeer.rendezvous.noise import public_bytes
from meshpeer.rendezvous.registry import ADMIN_TOKEN_NAME, Registry
from meshpeer.rendezvous.service import Rendezvous
from tests.joining import Joiner

GIVEN = config.Overrides(public_endpoint="192.0.2.10:51820", dns_listen="0.0.0.0:5353")
Client = TestClient[Any, Any]


@asynccontextmanager
async def api(data_dir: Path) -> AsyncIterator[tuple[Client, Rendezvous, str]]:
    service = Rendezvous(await Registry.open(data_dir, GIVEN))
    app = create_app(service.registry, service.snapshot, service.counters)
    client: Client = TestClient(TestServer(app))
    await client.start_server()
    admin = (data_dir / ADMIN_TOKEN_NAME).read_text().strip()
    try:
        yield client, service, admin
    finally:
        await client.close()
        await service.registry.close()


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(test())


def new_key() -> str:
    return encode_key(public_bytes(X25519PrivateKey.generate()))


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def make_token(
    client: Client, admin: str, uses: int = 1, allow_routes: tuple[str, ...] = ()
) -> str:
    body = {"uses": uses, "expires": "1h", "allow_routes": list(allow_routes)}
    answer = await client.post("/v1/admin/tokens", json=body, headers=bearer(admin))
    assert answer.status == 201, await answer.text()
    token: str = (await answer.json())["token"]
    return token


def test_a_peer_joins_reads_its_configuration_and_leaves(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with api(tmp_path) as (client, service, admin):
            token = await make_token(client, admin, allow_routes=("10.1.0.0/16",))
            laptop, rendezvous_key = Joiner("laptop"), service.registry.public_key
            key = laptop.public_key_b64
            body = laptop.body(token, rendezvous_key, ("10.1.0.0/24",))
            joined = await client.post("/v1/join", json=body)
            assert joined.status == 201
            answer = await joined.json()
            assert "credential" not in answer  # only sealed, for the key's holder
            assert answer["peer"]["address"] == "10.77.0.2"
            assert answer["peer"]["routes"] == ["10.1.0.0/24"]
            assert answer["network"] == "10.77.0.0/16" and answer["zone"] == "mesh.internal."
            assert answer["rendezvous"] == {
                "public_key": encode_key(service.registry.public_key),
                "endpoint": "192.0.2.10:51820",
                "address": "10.77.0.1",
            }
            assert answer["dns"] == "192.0.2.10:5353"
            body = laptop.body(token, rendezvous_key, ("10.1.0.0/24",))
            retried = await client.post("/v1/join", json=body)
            assert retried.status == 200  # the same key and name: the same registration
            credential = laptop.credential(await retried.json(), rendezvous_key)

            me = await (await client.get("/v1/self", headers=bearer(credential))).json()
            assert me["peer"]["public_key"] == key
            peers = await (await client.get("/v1/peers", headers=bearer(credential))).json()
            assert [peer["name"] for peer in peers] == ["laptop"]
            first_credential = laptop.credential(answer, rendezvous_key)
            stale = await client.get("/v1/self", headers=bearer(first_credential))
            assert stale.status == 401

            left = await client.delete("/v1/self", headers=bearer(credential))
            assert left.status == 200
            assert service.registry.peers() == []

    run(scenario)


def test_the_watch_delivers_a_change_within_100_ms(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with api(tmp_path) as (client, service, admin):
            token = await make_token(client, admin, uses=2)
            rendezvous_key, joiner = service.registry.public_key, Joiner("first")
            first = await client.post("/v1/join", json=joiner.body(token, rendezvous_key))
            credential = joiner.credential(await first.json(), rendezvous_key)
            now = await (await client.get("/v1/watch?timeout=0", headers=bearer(credential))).json()
            assert now["full"] and [peer["name"] for peer in now["peers"]] == ["first"]

            async def join_later() -> float:
                await asyncio.sleep(0.3)
                await client.post("/v1/join", json=Joiner("second").body(token, rendezvous_key))
                return time.monotonic()

            joining = asyncio.create_task(join_later())
            query = f"/v1/watch?epoch={now['epoch']}&since={now['revision']}&timeout=10"
            change = await (await client.get(query, headers=bearer(credential))).json()
            heard = time.monotonic()
            assert not change["full"]
            assert [peer["name"] for peer in change["peers"]] == ["second"]
            delay = heard - await joining
            assert delay < 0.1, delay

    run(scenario)


def test_two_joins_for_a_last_use_one_wins(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with api(tmp_path) as (client, service, admin):
            rendezvous_key = service.registry.public_key
            for round_ in range(5):
                token = await make_token(client, admin, uses=1)
                bodies = [Joiner(f"p{round_}{n}").body(token, rendezvous_key) for n in range(4)]
                answers = await asyncio.gather(
                    *(client.post("/v1/join", json=body) for body in bodies)
                )
                assert sorted(answer.status for answer in answers) == [201, 403, 403, 403]

    run(scenario)


def test_the_operator_manages_tokens_and_peers(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with api(tmp_path) as (client, service, admin):
            token = await make_token(client, admin, uses=3)
            listed = await (await client.get("/v1/admin/tokens", headers=bearer(admin))).json()
            [entry] = listed
            assert entry["uses_left"] == 3 and not entry["revoked"]
            revoked = await client.delete(f"/v1/admin/tokens/{entry['id']}", headers=bearer(admin))
            assert revoked.status == 200
            late = Joiner("late").body(token, service.registry.public_key)
            refused = await client.post("/v1/join", json=late)
            assert refused.status == 403
            assert "revoked" in (await refused.json())["error"]

            added = await client.post(
                "/v1/admin/peers",
                json={"public_key": new_key(), "name": "phone"},
                headers=bearer(admin),
            )
            assert added.status == 201
            removed = await client.delete("/v1/admin/peers/phone", headers=bearer(admin))
            assert removed.status == 200
            again = await client.delete("/v1/admin/peers/phone", headers=bearer(admin))
            assert again.status == 404
            not_admin = await client.get("/v1/admin/tokens", headers=bearer("guess"))
            assert not_admin.status == 401

            health = await (await client.get("/healthz")).json()
            assert health == {"status": "ok", "peers": 0}
            text = await (await client.get("/metrics")).text()
            assert 'meshpeer_api_requests_total{route="/v1/join",status="403"} 1' in text
            assert "meshpeer_peers 0" in text

    run(scenario)


JOIN = {"token": "mp2_x", "public_key": "KEY", "name": "ok", "time_ms": 1, "proof": "A" * 43 + "="}
BAD_REQUESTS: list[tuple[str, str, Any, int, str]] = [
    ("POST", "/v1/join", "not json", 400, "JSON object"),
    ("POST", "/v1/join", "[1, 2]", 400, "JSON object"),
    ("POST", "/v1/join", '{"public_key": NaN}', 400, "JSON object"),
    ("POST", "/v1/join", {"name": "x"}, 400, "must be strings"),
    ("POST", "/v1/join", {**JOIN, "public_key": None}, 400, "public key"),
    ("POST", "/v1/join", {**JOIN, "public_key": "short"}, 400, "44 characters"),
    ("POST", "/v1/join", {**JOIN, "name": "Bad_Name"}, 400, "DNS label"),
    ("POST", "/v1/join", {**JOIN, "routes": 5}, 400, "CIDR"),
    ("POST", "/v1/join", {**JOIN, "routes": ["x"]}, 400, "CIDR"),
    ("POST", "/v1/join", {**JOIN, "routes": ["0.0.0.0/0"]}, 400, "default route"),
    ("POST", "/v1/join", {**JOIN, "token": 7}, 400, "string"),
    ("POST", "/v1/join", {**JOIN, "token": "mp1_x"}, 400, "before the API used TLS"),
    ("POST", "/v1/join", {**JOIN, "token": "mp2_x"}, 400, "damaged"),
    ("POST", "/v1/join", {**JOIN, "time_ms": "soon"}, 400, "time_ms"),
    ("POST", "/v1/join", {**JOIN, "time_ms": 2**80}, 400, "time_ms"),
    ("POST", "/v1/join", {**JOIN, "proof": "abc"}, 400, "proof"),
    ("POST", "/v1/join", "x" * 70_000, 413, "Too Large"),
    ("POST", "/v1/join", "[" * 60_000, 400, "JSON object"),  # was a 500: RecursionError
    ("POST", "/v1/join", '{"a":' * 10_000 + "1" + "}" * 10_000, 400, "JSON object"),
    ("GET", "/v1/watch?since=%C2%B2", "ADMIN", 400, "whole number"),  # '²': isdigit() said yes
    ("GET", "/v1/watch?since=%D9%A3", "ADMIN", 400, "whole number"),  # an Arabic-Indic 3
    ("POST", "/v1/admin/tokens", {"expires": "9" * 400 + "s"}, 400, "duration"),  # overflowed
    ("POST", "/v1/admin/tokens", {"expires": "999999999w"}, 400, "at most 100 years"),
    ("POST", "/v1/admin/tokens", {"uses": 10**400}, 400, "between 1"),
    ("GET", "/v1/watch?timeout=" + "9" * 400, "ADMIN", 400, "seconds"),
    ("GET", "/v1/join", None, 405, "Not Allowed"),
    ("GET", "/nowhere", None, 404, "Not Found"),
    ("GET", "/v1/peers", None, 401, "Bearer"),
    ("GET", "/v1/watch?since=-1", "ADMIN", 400, "whole number"),
    ("GET", "/v1/watch?timeout=nan", "ADMIN", 400, "seconds"),
    ("POST", "/v1/admin/tokens", {"uses": "five"}, 400, "whole number"),
    ("POST", "/v1/admin/tokens", {"uses": 0}, 400, "between 1"),
    ("POST", "/v1/admin/tokens", {"expires": "forever"}, 400, "duration"),
]


def test_bad_requests_get_a_4xx_that_says_what_is_wrong(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with api(tmp_path) as (client, _, admin):
            key = new_key()
            for method, path, body, status, words in BAD_REQUESTS:
                headers = bearer(admin) if path.startswith("/v1/admin") or body == "ADMIN" else {}
                data = body if isinstance(body, str) and body != "ADMIN" else None
                payload = json.loads(json.dumps(body).replace("KEY", key)) if data is None else None
                answer = await client.request(
                    method,
                    path,
                    data=data,
                    json=payload if isinstance(payload, dict) else None,
                    headers=headers,
                )
                assert answer.status == status, (path, body, await answer.text())
                error = (await answer.json())["error"]
                assert words in error, (path, body, error)

    run(scenario)


def test_random_join_bodies_never_cause_a_server_error(tmp_path: Path) -> None:
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
        max_leaves=10,
    )
    fields = st.fixed_dictionaries(
        {},
        optional={
            "token": json_values | st.just("mp1_e30") | st.just("mp2_e30"),
            "public_key": json_values | st.just(new_key()),
            "name": json_values | st.from_regex(r"[a-z][a-z0-9-]{0,8}", fullmatch=True),
            "routes": json_values | st.lists(st.sampled_from(["10.5.0.0/16", "::/0", "1.2.3.4"])),
            "time_ms": json_values | st.integers(min_value=1, max_value=2**53),
            "proof": json_values | st.just("A" * 43 + "="),
        },
    )
    loop = asyncio.new_event_loop()
    context = api(tmp_path)
    client, _, _ = loop.run_until_complete(context.__aenter__())

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(body=fields | json_values)
    def check(body: Any) -> None:
        answer = loop.run_until_complete(client.post("/v1/join", json=body))
        assert 400 <= answer.status < 500, loop.run_until_complete(answer.text())
        assert "error" in loop.run_until_complete(answer.json())

    try:
        check()
    finally:
        loop.run_until_complete(context.__aexit__(None, None, None))
        loop.close()


def test_a_rejoin_with_a_public_key_and_any_token_gets_no_credential(tmp_path: Path) -> None:
    """The re-join takeover: the victim's key and name are public, the token is used up."""

    async def scenario() -> None:
        async with api(tmp_path) as (client, service, admin):
            token = await make_token(client, admin, uses=1)
            victim, rendezvous_key = Joiner("laptop"), service.registry.public_key
            joined = await client.post("/v1/join", json=victim.body(token, rendezvous_key))
            credential = victim.credential(await joined.json(), rendezvous_key)
            fresh = await make_token(client, admin, uses=5)
            attacker = Joiner("laptop")
            attempts: list[dict[str, object]] = [
                {"token": token, "public_key": victim.public_key_b64, "name": "laptop"},
                {"token": fresh, "public_key": victim.public_key_b64, "name": "laptop"},
                {**attacker.body(fresh, rendezvous_key), "public_key": victim.public_key_b64},
            ]
            for body in attempts:
                answer = await client.post("/v1/join", json=body)
                text = await answer.text()
                assert 400 <= answer.status < 500, text
                assert "credential" not in text, text
            me = await client.get("/v1/self", headers=bearer(credential))
            assert me.status == 200  # the real peer is untouched
            assert [peer.name for peer in service.registry.peers()] == ["laptop"]

    run(scenario)


def test_random_queries_and_raw_bodies_never_cause_a_server_error(tmp_path: Path) -> None:
    """Watch parameters in any script's digits, huge numbers, deep nesting: always a 4xx."""
    numbers = st.one_of(
        st.text(alphabet=st.characters(categories=["Nd", "No"]), min_size=1, max_size=30),
        st.integers(min_value=-(10**40), max_value=10**400).map(str),
        st.text(max_size=20),
    )
    bodies = st.one_of(
        st.integers(1, 20_000).map(lambda depth: "[" * depth + "]" * depth),
        st.integers(1, 20_000).map(lambda depth: '{"a":' * depth + "1" + "}" * depth),
        st.integers(1, 5000).map(lambda digits: '{"uses": ' + "9" * digits + "}"),
        st.binary(max_size=200).map(lambda raw: raw.decode("latin-1")),
    )
    loop = asyncio.new_event_loop()
    context = api(tmp_path)
    client, _, admin = loop.run_until_complete(context.__aenter__())

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(since=numbers, timeout=numbers, body=bodies)
    def check(since: str, timeout: str, body: str) -> None:
        query = {"since": since, "epoch": "x", "timeout": timeout}
        for answer in (
            loop.run_until_complete(client.get("/v1/watch", params=query, headers=bearer(admin))),
            loop.run_until_complete(client.post("/v1/join", data=body.encode())),
            loop.run_until_complete(
                client.post("/v1/admin/tokens", data=body.encode(), headers=bearer(admin))
            ),
        ):
            assert answer.status < 500, loop.run_until_complete(answer.text())

    try:
        check()
    finally:
        loop.run_until_complete(context.__aexit__(None, None, None))
        loop.close()


# -- hostile bodies at POST /v1/join (found by an outside review of the trust changes) --


def test_deeply_nested_json_is_a_400_not_a_500(tmp_path: Path) -> None:
    """64 KiB of '[' from anyone, no token needed: json.loads raises RecursionError, which
    the API does not count as bad input, so it answers 500 and logs a traceback per request."""

    async def scenario() -> None:
        async with api(tmp_path) as (client, _service, _admin):
            answer = await client.post(
                "/v1/join", data="[" * 60_000, headers={"Content-Type": "application/json"}
            )
            assert answer.status == 400, await answer.text()

    run(scenario)


def test_a_token_with_nested_json_inside_is_a_400_not_a_500(tmp_path: Path) -> None:
    """The same through the token: mp2_ + base64url of 1500 '[' fits the 2048-character cap."""

    async def scenario() -> None:
        async with api(tmp_path) as (client, service, _admin):
            nested = base64.urlsafe_b64encode(b"[" * 1500).rstrip(b"=").decode()
            body = Joiner("x").body("mp2_" + nested, service.registry.public_key)
            answer = await client.post("/v1/join", json=body)
            assert answer.status == 400, await answer.text()

    run(scenario)


def test_the_answer_to_a_refused_join_carries_no_secret(tmp_path: Path) -> None:
    """(Holds.) Errors name what to fix, never the token, the proof or a credential."""

    async def scenario() -> None:
        async with api(tmp_path) as (client, service, _admin):
            joiner = Joiner("x")
            body = joiner.body("mp2_" + "A" * 200, service.registry.public_key)
            body["public_key"] = encode_key(bytes(32))
            for mutation in ({}, {"public_key": "!" * 44}, {"time_ms": 0}, {"proof": "x"}):
                answer = await client.post("/v1/join", json={**body, **mutation})
                text = await answer.text()
                assert answer.status in (400, 403), text
                assert str(body["token"]) not in text and str(body["proof"]) not in text

    run(scenario)


def test_a_peer_names_its_relay_partners_and_every_peer_sees_them(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with api(tmp_path) as (client, service, admin):
            rendezvous_key = service.registry.public_key
            credentials = {}
            for name in ("laptop", "phone"):
                joiner = Joiner(name)
                token = await make_token(client, admin)
                joined = await client.post("/v1/join", json=joiner.body(token, rendezvous_key))
                credentials[name] = joiner.credential(await joined.json(), rendezvous_key)
            phone = encode_key(service.registry.find("phone").public_key)
            stranger, laptop = new_key(), encode_key(service.registry.find("laptop").public_key)
            asked = {"partners": [phone, stranger, laptop, phone]}
            headers = bearer(credentials["laptop"])
            answer = await client.put("/v1/relay", json=asked, headers=headers)
            assert answer.status == 200
            assert await answer.json() == {"partners": [phone]}  # itself and strangers go
            listed = await client.get("/v1/peers", headers=bearer(credentials["phone"]))
            by_name = {peer["name"]: peer for peer in await listed.json()}
            assert by_name["laptop"]["relay_partners"] == [phone]
            for bad in ({"partners": "x"}, {"partners": ["x"]}, {"partners": [phone] * 65}, {}):
                refused = await client.put("/v1/relay", json=bad, headers=headers)
                assert refused.status == 400, bad
            nobody = await client.put("/v1/relay", json=asked, headers=bearer("nonsense"))
            assert nobody.status == 401

    run(scenario)
