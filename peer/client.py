"""The agent's side of the rendezvous HTTP API: join, and the watch (long poll)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp

from meshpeer.rendezvous.model import encode_key
from meshpeer.rendezvous.tokens import JoinToken

from .state import Membership

REQUEST_TIMEOUT_S = 15.0
WATCH_TIMEOUT_S = 25.0  # the server answers by then even when nothing changed


class JoinRefused(Exception):
    """The rendezvous said no (bad token, name taken, ...): the user must act."""


class Unreachable(Exception):
    """No answer from the rendezvous: retry later; existing tunnels keep working meanwhile."""


@dataclass(frozen=True, slots=True)
class WatchAnswer:
    epoch: str
    revision: int
    full: bool
    peers: list[dict[str, Any]]
    removed: list[str]


async def join(
    token: JoinToken, public_key: str, name: str, routes: list[str]
) -> tuple[Membership, dict[str, Any]]:
    body = {"token": token.encode(), "public_key": public_key, "name": name, "routes": routes}
    status, answer = await _request("POST", f"{token.api_url}/v1/join", body=body)
    if status >= 400:
        raise JoinRefused(str(answer.get("error", f"the rendezvous answered {status}")))
    offered = answer.get("rendezvous", {}).get("public_key")
    if offered != encode_key(token.rendezvous_key):
        raise JoinRefused(
            "the rendezvous at the token's URL has another key than the token names; "
            "check the URL or make a new token"
        )
    membership = Membership.from_join(answer, token.api_url, str(answer["credential"]))
    return membership, answer


async def watch(
    membership: Membership, epoch: str | None, revision: int | None, timeout_s: float
) -> WatchAnswer:
    query = f"timeout={timeout_s:g}"
    if epoch is not None and revision is not None:
        query += f"&epoch={epoch}&since={revision}"
    status, answer = await _request(
        "GET",
        f"{membership.api_url}/v1/watch?{query}",
        credential=membership.credential,
        timeout_s=timeout_s + REQUEST_TIMEOUT_S,
    )
    if status == 401:
        raise JoinRefused("the rendezvous no longer knows this peer; it was removed")
    if status >= 400:
        raise Unreachable(f"the rendezvous answered {status}: {answer.get('error')}")
    return WatchAnswer(
        str(answer["epoch"]),
        int(answer["revision"]),
        bool(answer["full"]),
        list(answer["peers"]),
        [str(key) for key in answer["removed"]],
    )


async def _request(
    method: str,
    url: str,
    *,
    body: dict[str, Any] | None = None,
    credential: str | None = None,
    timeout_s: float = REQUEST_TIMEOUT_S,
) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {credential}"} if credential else {}
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.request(method, url, json=body, headers=headers) as response,
        ):
            try:
                answer = await response.json(content_type=None)
            except ValueError:
                answer = {}
            return response.status, answer if isinstance(answer, dict) else {}
    except (aiohttp.ClientError, TimeoutError, OSError) as error:
        raise Unreachable(f"cannot reach the rendezvous at {url}: {error!r}") from None
