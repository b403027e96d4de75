"""The HTTP API over a real socket: the join flow, the watch, admin calls and hostile input."""

from __future__ import annotations

import asyncio
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

from meshpeer.rendezvous import settings as config
from meshpeer.rendezvous.api import create_app
from meshpeer.rendezvous.model import encode_key
from meshpeer.rendezvous.noise import public_bytes
from meshpeer.rendezvous.registry import ADMIN_TOKEN_NAME, Registry
from meshpeer.rendezvous.service import Rendezvous

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


async def make_token(client: Client, admin: str, uses: int = 1) -> str:
    answer = await client.post(
        "/v1/admin/tokens", json={"uses": uses, "expires": "1h"}, headers=bearer(admin)
    )
    assert answer.status == 201, await answer.text()
    token: str = (await answer.json())["token"]
    return token


def test_a_peer_joins_reads_its_configuration_and_leaves(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with api(tmp_path) as (client, service, admin):
            token = await make_token(client, admin)
            key = new_key()
            body = {"token": token, "public_key": key, "name": "laptop", "routes": ["10.1.0.0/24"]}
            joined = await client.post("/v1/join", json=body)
            assert joined.status == 201
            answer = await joined.json()
            assert answer["peer"]["address"] == "10.77.0.2"
            assert answer["peer"]["routes"] == ["10.1.0.0/24"]
            assert answer["network"] == "10.77.0.0/16" and answer["zone"] == "mesh.internal."
            assert answer["rendezvous"] == {
                "public_key": encode_key(service.registry.public_key),
                "endpoint": "192.0.2.10:51820",
                "address": "10.77.0.1",
            }
            assert answer["dns"] == "192.0.2.10:5353"
            retried = await client.post("/v1/join", json=body)
            assert retried.status == 200  # the same key and name: the same registration
            credential = (await retried.json())["credential"]

            me = await (await client.get("/v1/self", headers=bearer(credential))).json()
            assert me["peer"]["public_key"] == key
            peers = await (await client.get("/v1/peers", headers=bearer(credential))).json()
            assert [peer["name"] for peer in peers] == ["laptop"]
            stale = await client.get("/v1/self", headers=bearer(answer["credential"]))
            assert stale.status == 401

            left = await client.delete("/v1/self", headers=bearer(credential))
            assert left.status == 200
            assert service.registry.peers() == []

    run(scenario)


def test_the_watch_delivers_a_change_within_100_ms(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with api(tmp_path) as (client, _, admin):
            token = await make_token(client, admin, uses=2)
            first = await client.post(
                "/v1/join", json={"token": token, "public_key": new_key(), "name": "first"}
            )
            credential = (await first.json())["credential"]
            now = await (await client.get("/v1/watch?timeout=0", headers=bearer(credential))).json()
            assert now["full"] and [peer["name"] for peer in now["peers"]] == ["first"]

            async def join_later() -> float:
                await asyncio.sleep(0.3)
                await client.post(
                    "/v1/join", json={"token": token, "public_key": new_key(), "name": "second"}
                )
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
        async with api(tmp_path) as (client, _, admin):
            for round_ in range(5):
                token = await make_token(client, admin, uses=1)
                answers = await asyncio.gather(
                    *(
                        client.post(
                            "/v1/join",
                            json={"token": token, "public_key": new_key(), "name": f"p{round_}{n}"},
                        )
                        for n in range(4)
                    )
                )
                assert sorted(answer.status for answer in answers) == [201, 403, 403, 403]

    run(scenario)


def test_the_operator_manages_tokens_and_peers(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with api(tmp_path) as (client, _, admin):
            token = await make_token(client, admin, uses=3)
            listed = await (await client.get("/v1/admin/tokens", headers=bearer(admin))).json()
            [entry] = listed
            assert entry["uses_left"] == 3 and not entry["revoked"]
            revoked = await client.delete(f"/v1/admin/tokens/{entry['id']}", headers=bearer(admin))
            assert revoked.status == 200
            refused = await client.post(
                "/v1/join", json={"token": token, "public_key": new_key(), "name": "late"}
            )
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


BAD_REQUESTS: list[tuple[str, str, Any, int, str]] = [
    ("POST", "/v1/join", "not json", 400, "JSON object"),
    ("POST", "/v1/join", "[1, 2]", 400, "JSON object"),
    ("POST", "/v1/join", '{"public_key": NaN}', 400, "JSON object"),
    ("POST", "/v1/join", {"name": "x"}, 400, "public key"),
    ("POST", "/v1/join", {"public_key": "short", "name": "x"}, 400, "44 characters"),
    ("POST", "/v1/join", {"public_key": "KEY", "name": "Bad_Name"}, 400, "DNS label"),
    ("POST", "/v1/join", {"public_key": "KEY", "name": "ok", "routes": 5}, 400, "CIDR"),
    ("POST", "/v1/join", {"public_key": "KEY", "name": "ok", "routes": ["x"]}, 400, "CIDR"),
    ("POST", "/v1/join", {"public_key": "KEY", "name": "ok", "token": 7}, 400, "string"),
    ("POST", "/v1/join", {"public_key": "KEY", "name": "ok", "token": "mp1_x"}, 400, "damaged"),
    ("POST", "/v1/join", "x" * 70_000, 413, "Too Large"),
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
            "token": json_values | st.just("mp1_e30"),
            "public_key": json_values | st.just(new_key()),
            "name": json_values | st.from_regex(r"[a-z][a-z0-9-]{0,8}", fullmatch=True),
            "routes": json_values | st.lists(st.sampled_from(["10.5.0.0/16", "::/0", "1.2.3.4"])),
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
