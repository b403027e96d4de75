"""The HTTP API (aiohttp): join, peers, watch, admin calls, health and metrics.

Every answer is JSON, errors included: `{"error": "<what to fix>"}` with a 4xx status for
anything the caller got wrong. Peers authenticate with the credential `join` gave them, the
operator with the admin token from the data folder; both as `Authorization: Bearer ...`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from meshpeer.common import proof
from meshpeer.common.endpoints import format_endpoint, lan_endpoints
from meshpeer.common.errors import InvalidInput, UsageError
from meshpeer.common.keys import encode_key, parse_key
from meshpeer.common.proof import ProofRejected
from meshpeer.dns.naming import parse_name

from . import model
from .httpguard import GuardedConnection
from .metrics import CONTENT_TYPE, ApiCounters, Snapshot, render
from .model import Conflict, NotFound, Peer, Rationed, TokenRejected
from .registry import Registry
from .snapshots import SnapshotCache, SnapshotRation
from .timers import DEFAULT_WATCH_S, HTTP_BODY_TIMEOUT_S, MAX_WATCH_S, RELAY_PARTNERS_PER_PEER

logger = logging.getLogger("meshpeer.rendezvous.api")

MAX_BODY_BYTES = 64 * 1024
REGISTRY = web.AppKey("registry", Registry)
COUNTERS = web.AppKey("counters", ApiCounters)
SNAPSHOT: web.AppKey[Callable[[], Snapshot]] = web.AppKey("snapshot")
RATION = web.AppKey("ration", SnapshotRation)
SNAPSHOTS = web.AppKey("snapshots", SnapshotCache)
GUARDS: web.AppKey[dict[object, GuardedConnection]] = web.AppKey("guards")

_WHOLE_NUMBER = re.compile(r"[0-9]{1,18}")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_STATUS_OF: dict[type[Exception], int] = {
    InvalidInput: 400,
    TokenRejected: 403,
    ProofRejected: 403,
    NotFound: 404,
    Conflict: 409,
}


class Unauthorized(UsageError):
    pass


def create_app(
    registry: Registry, snapshot: Callable[[], Snapshot], counters: ApiCounters
) -> web.Application:
    """`snapshot` gathers the figures of /metrics, including those in `counters`."""
    app = web.Application(
        middlewares=[_request_deadline, _json_errors], client_max_size=MAX_BODY_BYTES
    )
    app[GUARDS] = {}  # by transport: apiserve.py's connections, for their header deadline
    app[REGISTRY] = registry
    app[COUNTERS] = counters
    app[SNAPSHOT] = snapshot
    app[RATION] = SnapshotRation()
    app[SNAPSHOTS] = SnapshotCache()
    app.router.add_post("/v1/join", join)
    app.router.add_get("/v1/self", show_self)
    app.router.add_delete("/v1/self", leave)
    app.router.add_get("/v1/peers", list_peers)
    app.router.add_get("/v1/watch", watch)
    app.router.add_put("/v1/relay", set_relay)
    app.router.add_put("/v1/lan", set_lan)
    app.router.add_get("/v1/admin/tokens", list_tokens)
    app.router.add_post("/v1/admin/tokens", create_token)
    app.router.add_delete("/v1/admin/tokens/{token_id}", revoke_token)
    app.router.add_post("/v1/admin/peers", add_peer)
    app.router.add_delete("/v1/admin/peers/{peer}", remove_peer)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app


@web.middleware
async def _request_deadline(request: web.Request, handler: Handler) -> web.StreamResponse:
    """While a request is handled its connection has no header deadline (httpguard.py)."""
    guard = request.app[GUARDS].get(request.transport)
    if guard is not None:
        guard.request_started()
    try:
        return await handler(request)
    finally:
        if guard is not None:
            guard.request_finished()


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as error:
        response = _error(error.status, error.reason)
    except Unauthorized as error:
        response = _error(401, str(error))
    except (InvalidInput, TokenRejected, ProofRejected, NotFound, Conflict) as error:
        response = _error(_STATUS_OF[type(error)], str(error))
    except Rationed as error:
        response = _error(429, f"{error}; retry in {error.retry_after_s:.0f} s")
        response.headers["Retry-After"] = str(max(1, round(error.retry_after_s)))
    except Exception:
        logger.exception("unexpected error in %s %s", request.method, request.path)
        response = _error(500, "internal error; the rendezvous log has the details")
    route = request.match_info.route.resource
    request.app[COUNTERS].count(route.canonical if route else "unmatched", response.status)
    return response


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


# -- peers ------------------------------------------------------------------------------------


async def join(request: web.Request) -> web.Response:
    """A join signed with the peer's key (proof.py); the credential comes back sealed to it."""
    registry = request.app[REGISTRY]
    join_request = proof.parse_join(await _json_object(request))
    parse_name(join_request.name)
    registration = await registry.join(join_request)
    peer = registration.peer
    answer = _configuration(registry, peer)
    answer["peer"] = peer.to_json(operator=True)  # its own pending routes, for its log
    answer["sealed_credential"] = proof.seal(
        registration.join_keys, peer.public_key, registration.credential
    )
    return web.json_response(answer, status=201 if registration.created else 200)


async def show_self(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY]
    return web.json_response(_configuration(registry, _peer_caller(request)))


async def leave(request: web.Request) -> web.Response:
    peer = _peer_caller(request)
    await request.app[REGISTRY].remove_peer(peer.public_key_b64)
    return web.json_response({"removed": peer.to_json()})


async def list_peers(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY]
    request.app[RATION].take(await _any_caller(request), _now())
    peers = list(registry.all_peers())
    body = await asyncio.to_thread(_render_list, peers)
    return web.Response(body=body, content_type="application/json")


async def set_relay(request: web.Request) -> web.Response:
    """The peers the caller reaches through the relay, replacing what it said before."""
    peer = _peer_caller(request)
    listed = (await _json_object(request)).get("partners")
    if not isinstance(listed, list) or len(listed) > RELAY_PARTNERS_PER_PEER:
        raise InvalidInput(f"partners must be a list of at most {RELAY_PARTNERS_PER_PEER} keys")
    partners = tuple(parse_key(key, "a relay partner") for key in listed)
    peer = await request.app[REGISTRY].set_relay_partners(peer, partners)
    return web.json_response({"partners": [encode_key(key) for key in peer.relay_partners]})


async def set_lan(request: web.Request) -> web.Response:
    """Where the caller is on its own LANs (what it announces on mDNS), replacing what it said
    before; every peer hears it with the list."""
    peer = _peer_caller(request)
    endpoints = lan_endpoints((await _json_object(request)).get("endpoints"))
    peer = await request.app[REGISTRY].set_lan_endpoints(peer, endpoints)
    return web.json_response({"endpoints": [format_endpoint(e) for e in peer.lan_endpoints]})


def _render_list(peers: list[Peer]) -> bytes:
    peers.sort(key=lambda peer: peer.name)
    return json.dumps([peer.to_json() for peer in peers], separators=(",", ":")).encode()


async def watch(request: web.Request) -> web.Response:
    """Long poll: answers at once when `since` is behind, else at the next change or timeout.
    Full lists are shared per revision and rationed per caller (snapshots.py)."""
    registry = request.app[REGISTRY]
    caller = await _any_caller(request)
    query = request.query
    since = _int_parameter(query.get("since"), "since")
    epoch = query.get("epoch")
    if epoch is not None and len(epoch) > 64:
        raise InvalidInput("epoch must be the value a previous watch returned")
    timeout = _float_parameter(query.get("timeout"), "timeout", DEFAULT_WATCH_S)
    result = await registry.watch(epoch, since, min(timeout, MAX_WATCH_S))
    if result.full:
        request.app[RATION].take(caller, _now())
        instances = registry.instances.to_json()
        snapshots = request.app[SNAPSHOTS]
        body = await snapshots.body(result.epoch, result.revision, result.peers, instances)
        return web.Response(body=body, content_type="application/json")
    answer = {
        "epoch": result.epoch,
        "revision": result.revision,
        "full": result.full,
        "peers": [peer.to_json() for peer in result.peers],
        "removed": [encode_key(key) for key in result.removed],
    }
    if result.instances_changed:  # only then: an agent keeps the list it last heard
        answer["instances"] = registry.instances.to_json()
    return web.json_response(answer)


# -- the operator -----------------------------------------------------------------------------


async def list_tokens(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY]
    await _admin(request)
    return web.json_response([token.to_json() for token in await registry.list_tokens()])


async def create_token(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY]
    await _admin(request)
    body = await _json_object(request)
    uses = body.get("uses", 1)
    if not isinstance(uses, int) or isinstance(uses, bool):
        raise InvalidInput("uses must be a whole number such as 5")
    lifetime = model.parse_duration(_text(body, "expires", "24h"))
    settings = registry.settings
    allowed = model.parse_routes(
        body.get("allow_routes", []), settings.network, settings.own_addresses
    )
    token = await registry.create_token(uses, lifetime, allowed)
    return web.json_response({"token": token}, status=201)


async def revoke_token(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY]
    await _admin(request)
    await registry.revoke_token(request.match_info["token_id"])
    return web.json_response({"revoked": request.match_info["token_id"]})


async def add_peer(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY]
    await _admin(request)
    body = await _json_object(request)
    public_key = parse_key(body.get("public_key"))
    name = parse_name(body.get("name"))
    settings = registry.settings
    routes = model.parse_routes(body.get("routes", []), settings.network, settings.own_addresses)
    peer = await registry.add_peer(public_key, name, routes)
    return web.json_response(_configuration(registry, peer), status=201)


async def remove_peer(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY]
    await _admin(request)
    peer = await registry.remove_peer(request.match_info["peer"])
    return web.json_response({"removed": peer.to_json()})


# -- health -----------------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY]
    return web.json_response({"status": "ok", "peers": len(registry)})


async def metrics(request: web.Request) -> web.Response:
    response = web.Response(text=render(request.app[SNAPSHOT]()))
    response.headers["Content-Type"] = CONTENT_TYPE
    return response


# -- helpers ----------------------------------------------------------------------------------


def _configuration(registry: Registry, peer: Peer) -> dict[str, Any]:
    """All a peer needs to configure its interface, as join and /v1/self return it."""
    settings = registry.settings
    return {
        "peer": peer.to_json(),
        "network": str(settings.network),
        "zone": settings.zone,
        "rendezvous": {
            "public_key": encode_key(registry.public_key),
            "endpoint": format_endpoint(settings.public_endpoint),
            "address": str(settings.rendezvous_address),
        },
        "dns": format_endpoint(settings.dns_address),
        "api_url": settings.public_api_url,
        "instances": registry.instances.to_json(),  # every one serving, this one first
    }


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        async with asyncio.timeout(HTTP_BODY_TIMEOUT_S):
            body = await request.json(loads=_strict_loads)
    except TimeoutError:
        raise web.HTTPRequestTimeout(reason="the request body came too slowly") from None
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput("the request body must be a JSON object") from None
    if not isinstance(body, dict):
        raise InvalidInput("the request body must be a JSON object")
    return body


def _strict_loads(text: str) -> Any:
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:  # 60,000 '[' in 64 KiB: Python's parser recurses per level
        raise ValueError("nested too deeply") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _text(body: dict[str, Any], key: str, default: str | None = None) -> str:
    value = body.get(key, default)
    if not isinstance(value, str):
        raise InvalidInput(f"{key} must be a string")
    return value


def _int_parameter(text: str | None, name: str) -> int | None:
    if text is None:
        return None
    if not _WHOLE_NUMBER.fullmatch(text):  # not isdigit(): '²' is a digit to it, not to int()
        raise InvalidInput(f"{name} must be a whole number")
    return int(text)


def _float_parameter(text: str | None, name: str, default: float) -> float:
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        raise InvalidInput(f"{name} must be a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise InvalidInput(f"{name} must be a number of seconds")
    return value


def _bearer(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Unauthorized("send Authorization: Bearer <credential from join, or admin token>")
    return value.strip()


def _peer_caller(request: web.Request) -> Peer:
    peer = request.app[REGISTRY].authenticate(_bearer(request))
    if peer is None:
        raise Unauthorized("unknown credential; join again with a token")
    return peer


async def _admin(request: web.Request) -> None:
    if not await request.app[REGISTRY].is_admin(_bearer(request)):
        raise Unauthorized("unknown admin token; it is in the data folder's admin-token file")


async def _any_caller(request: web.Request) -> bytes:
    """Who calls, as the key of its rations: a peer's public key, or the operator."""
    secret = _bearer(request)
    registry = request.app[REGISTRY]
    peer = registry.authenticate(secret)
    if peer is not None:
        return peer.public_key
    if await registry.is_admin(secret):
        return b"operator"
    raise Unauthorized("unknown credential; join again with a token")


def _now() -> float:
    return asyncio.get_running_loop().time()
