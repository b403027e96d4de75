"""The agent's side of the rendezvous HTTP API: the watch (long poll) and its reports (the join,
which needs our private key, is joining.py's).

Every call goes over TLS checked against the pin the join token carried (or the system's CAs
for an API behind a TLS proxy), so no secret leaves before the other end proved it is the
rendezvous the operator meant.
"""

from __future__ import annotations

import contextlib
import os
import socket
from typing import Any
from urllib.parse import quote

from meshpeer.common.endpoints import Endpoint, format_endpoint, lan_endpoints
from meshpeer.common.errors import Failure, InvalidInput, UsageError
from meshpeer.common.keys import encode_key, parse_key
from meshpeer.common.limits import MAX_RELAY_PARTNERS
from meshpeer.common.pinning import PinnedCertificates, PinOf, pin_here

from . import http
from .api_decode import WatchAnswer, watch_answer
from .state import Membership
from .timers import (
    CONNECT_TIMEOUT_S,
    DEAD_CONNECTION_S,
    KEEPALIVE_IDLE_S,
    KEEPALIVE_INTERVAL_S,
    KEEPALIVE_PROBES,
    REQUEST_TIMEOUT_S,
)


class JoinRefused(UsageError):
    """The rendezvous said no (bad token, name taken, ...): the user must act."""


class Removed(JoinRefused):
    """The rendezvous no longer knows our credential: the operator removed this peer."""


class Unreachable(Failure):
    """No answer from the rendezvous: retry later; existing tunnels keep working meanwhile."""


class WrongCertificate(Failure):
    """The API answered with a key the pin does not name: someone else is in the path."""


async def watch(
    membership: Membership, epoch: str | None, revision: int | None, timeout_s: float
) -> WatchAnswer:
    query = f"timeout={timeout_s:g}"
    if epoch is not None and revision is not None:
        query += f"&epoch={quote(epoch, safe='')}&since={revision}"  # the server's text
    url = f"{membership.api_url}/v1/watch?{query}"
    answer = _as_member_answer(
        *await _as_member("GET", url, membership, timeout_s=timeout_s + REQUEST_TIMEOUT_S)
    )
    try:
        return watch_answer(answer)
    except (KeyError, TypeError, ValueError):
        raise Unreachable(f"{url} answered, but not as the API does (a captive portal?)") from None


async def set_relay(membership: Membership, partners: frozenset[bytes]) -> frozenset[bytes]:
    """Tell the rendezvous which peers we reach through its relay (PUT /v1/relay); it answers
    with those it holds (registered peers only)."""
    body = {"partners": sorted(encode_key(key) for key in partners)}
    url = f"{membership.api_url}/v1/relay"
    held = _as_member_answer(*await _as_member("PUT", url, membership, body=body)).get("partners")
    if not isinstance(held, list) or len(held) > MAX_RELAY_PARTNERS:
        raise Unreachable("the rendezvous's answer to PUT /v1/relay is not the API's")
    try:
        return frozenset(parse_key(key) for key in held)
    except InvalidInput:
        raise Unreachable("the rendezvous's answer to PUT /v1/relay is not the API's") from None


async def set_lan(membership: Membership, endpoints: tuple[Endpoint, ...]) -> tuple[Endpoint, ...]:
    """Tell the rendezvous where we are on our LANs (PUT /v1/lan); it answers with what it
    holds, checked as it checks ours."""
    body = {"endpoints": [format_endpoint(endpoint) for endpoint in endpoints]}
    url = f"{membership.api_url}/v1/lan"
    held = _as_member_answer(*await _as_member("PUT", url, membership, body=body))
    try:
        return lan_endpoints(held.get("endpoints"))
    except InvalidInput:
        raise Unreachable("the rendezvous's answer to PUT /v1/lan is not the API's") from None


async def leave(membership: Membership) -> None:
    """Take this machine out of its mesh (DELETE /v1/self); already out counts as done."""
    status, answer = await _as_member("DELETE", f"{membership.api_url}/v1/self", membership)
    if status not in (200, 401):
        raise Unreachable(f"the rendezvous answered {status}: {answer.get('error')}")


async def _as_member(
    method: str,
    url: str,
    membership: Membership,
    *,
    body: dict[str, Any] | None = None,
    timeout_s: float = REQUEST_TIMEOUT_S,
) -> tuple[int, dict[str, Any]]:
    """A request with our credential. A TLS key the token does not pin is only unreachable
    here: a captive portal, or someone in the path; wait it out."""
    try:
        return await _request(
            method,
            url,
            membership.tls_pin,
            body=body,
            credential=membership.credential,
            timeout_s=timeout_s,
        )
    except WrongCertificate as error:
        raise Unreachable(str(error)) from None


def _as_member_answer(status: int, answer: dict[str, Any]) -> dict[str, Any]:
    """The answer to a member's request; Removed when our credential is no longer known."""
    if status == 401:
        raise Removed("the operator removed this machine from the mesh")
    if status >= 400:
        raise Unreachable(f"the rendezvous answered {status}: {answer.get('error')}")
    return answer


async def _request(
    method: str,
    url: str,
    tls_pin: str | None,
    *,
    body: dict[str, Any] | None = None,
    credential: str | None = None,
    timeout_s: float = REQUEST_TIMEOUT_S,
) -> tuple[int, dict[str, Any]]:
    # A silent host (down, or its network cut: no refusal, no reset) fails a connection within
    # CONNECT_TIMEOUT_S, and an open one (the watch's long poll) within DEAD_CONNECTION_S
    # (TCP keepalives), not at the end of the request's whole timeout: the failover waits on it.
    try:
        answer = await http.request(
            method,
            url,
            pinned_certificates(tls_pin) if tls_pin else None,
            body=body,
            credential=credential,
            connect_timeout_s=CONNECT_TIMEOUT_S,
            timeout_s=timeout_s,
            tune_socket=_probing,
        )
    except http.WrongKey:
        raise WrongCertificate(
            f"{url} answered with a TLS key the token does not pin: someone else is in the "
            "path, or the token is from another rendezvous; nothing was sent"
        ) from None
    except (http.RequestFailed, TimeoutError, OSError) as error:
        raise Unreachable(f"cannot reach {_origin(url)}: {_reason(error)}") from None
    return answer.status, answer.body


def pinned_certificates(pin: str) -> PinnedCertificates:
    """The one check per pin in this process, so a certificate is parsed once (pinning.py)."""
    checked = _PINNED.get(pin)
    if checked is None:
        while len(_PINNED) >= MAX_PINS:
            del _PINNED[next(iter(_PINNED))]
        checked = _PINNED[pin] = PinnedCertificates(pin, pin_of=_pin_of)
    return checked


def check_certificates_with(pin_of: PinOf) -> None:
    """How a certificate not seen before is parsed: the agent asks its join process."""
    global _pin_of
    _pin_of = pin_of
    _PINNED.clear()


def remember_certificates(pin: str, digests: tuple[str, ...]) -> None:
    """Certificates a join process (or an earlier run) saw holding the pin's key."""
    checked = pinned_certificates(pin)
    for digest in digests:
        checked.remember(digest)


# Pins an agent checks against: its membership's, and a token's while it joins again.
MAX_PINS = 4
_PINNED: dict[str, PinnedCertificates] = {}
_pin_of: PinOf = pin_here


def _probing(sock: Any) -> None:
    """Make a connected TCP socket give up on a silent peer: keepalive probes after
    KEEPALIVE_IDLE_S of quiet, KEEPALIVE_PROBES of them KEEPALIVE_INTERVAL_S apart, and
    unacknowledged data (probes included) aborts it after DEAD_CONNECTION_S. Each option is
    best effort: a kernel without one (a sandbox) keeps the long poll's own timeout."""
    options = [
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
        (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE_S),
        (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL_S),
        (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_PROBES),
        (socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(DEAD_CONNECTION_S * 1000)),
    ]
    for level, option, value in options:
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(level, option, value)


def _origin(url: str) -> str:
    """The URL without its path and query: what a log line needs to say where."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}"


def _reason(error: BaseException) -> str:
    """Why a request failed, in a few words (the exception's repr is a paragraph)."""
    if isinstance(error, TimeoutError):
        return "no answer in time"
    if isinstance(error, http.RequestFailed):
        return str(error)
    if isinstance(error, OSError) and error.errno:  # asyncio's own text names the address
        return os.strerror(error.errno).lower()
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()
    if isinstance(error, OSError) and str(error):  # several addresses, each its own failure
        return str(error)[:300]
    return type(error).__name__
