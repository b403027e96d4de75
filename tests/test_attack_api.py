"""Outside review of the trust changes: hostile bodies at POST /v1/join over a real socket."""

from __future__ import annotations

import base64
from pathlib import Path

from meshpeer.common.keys import encode_key
from tests.joining import Joiner
from tests.test_api import api, run


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
