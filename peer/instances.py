"""The rendezvous instances of a mesh as this agent knows them, and which one it uses (issue 18).

Several `rendezvous serve` on one PostgreSQL database share one WireGuard key and one TLS
certificate, and any of them answers the API, DNS and the relay for the whole mesh. The join
answer and the watch list the live ones (the answering one first). The agent talks to one at a
time and moves to the next when the one it uses has not answered for FAILOVER_AFTER_S. Why one
at a time, rather than each instance as a WireGuard peer with a keepalive: one key is one
WireGuard peer, which has one endpoint; and a relayed pair needs both its sides at the same
instance, which a common order of failover gives (every agent of a dead instance moves to the
same next one).

The list comes from the network: bounded, and each field checked before it reaches a URL, a
WireGuard endpoint or a resolver. A new URL is still only used under the token's TLS pin, so a
listed instance must hold the mesh's certificate to learn anything from us.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import string
import urllib.parse
from dataclasses import dataclass, field

from meshpeer.common.endpoints import (
    IPAddress,
    format_endpoint,
    host_of,
    ip_literal,
    parse_host_port,
)
from meshpeer.common.errors import InvalidInput

from .timers import FAILBACK_AFTER_S, FAILOVER_AFTER_S

MAX_INSTANCES = 16  # the rendezvous lists at most this many (its MAX_LISTED_INSTANCES)
MAX_URL_LENGTH = 2048
MAX_SHUN_S = 3600.0  # the longest an instance left for its silence waits to be used again
MAX_SHUNNED = 2 * MAX_INSTANCES  # instances with a backoff kept, listed or not
# RFC 3986's unreserved and sub-delims, ":", "/" and "%" (a percent-escape in the path): no
# "?", "#" or "@", no spaces, quotes or controls.
_URL_CHARACTERS = frozenset(string.ascii_letters + string.digits + "-._~!$&'()*+,;=:/%[]")
_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


@dataclass(frozen=True, slots=True, order=True)
class Instance:
    api_url: str  # https://HOST[:PORT][/PATH], no trailing slash
    endpoint: str  # HOST:PORT of its WireGuard (and relay)
    dns: str  # HOST:PORT of its DNS server

    def to_json(self) -> dict[str, str]:
        return {"api_url": self.api_url, "endpoint": self.endpoint, "dns": self.dns}


def parse_instances(raw: object) -> tuple[Instance, ...]:
    """The instances an API answer lists; malformed ones are skipped, never fatal."""
    if not isinstance(raw, list):
        return ()
    found: dict[str, Instance] = {}  # by URL: one instance, one entry
    for item in raw[:MAX_INSTANCES]:
        instance = parse_instance(item)
        if instance is not None:
            found.setdefault(instance.api_url, instance)
    return tuple(found.values())


def parse_instance(item: object) -> Instance | None:
    if not isinstance(item, dict):
        return None
    try:
        url = api_url(item.get("api_url"))
        endpoint = _host_port(item.get("endpoint"))
        dns = _host_port(item.get("dns"))
    except InvalidInput:
        return None
    return Instance(url, endpoint, dns)


def api_url(value: object) -> str:
    """An instance's API URL in one canonical spelling (`https://host[:port][/path]`, the host
    in lower case without a trailing dot, no :443), or InvalidInput. Nothing a request would
    read otherwise: no credentials (aiohttp refuses a request whose URL has `@` at all), no
    query or fragment (the API's own query would go after them), no controls or spaces."""
    if not isinstance(value, str) or len(value) > MAX_URL_LENGTH or not value.isascii():
        raise InvalidInput("not an API URL")
    if not _URL_CHARACTERS.issuperset(value):
        raise InvalidInput("not an API URL")
    try:
        parts = urllib.parse.urlsplit(value)
        port = parts.port  # ValueError when out of range
    except ValueError:
        raise InvalidInput("not an API URL") from None
    # https only: the token's pin (or the CA check) protects every request, this one too.
    if parts.scheme.lower() != "https" or "@" in parts.netloc or not parts.hostname:
        raise InvalidInput("not an API URL")
    if parts.netloc.endswith(":") or port == 0:
        raise InvalidInput("not an API URL")
    host = _host(parts.hostname).removesuffix(".")
    host = f"[{host}]" if ":" in host else host
    authority = host if port in (None, 443) else f"{host}:{port}"
    return f"https://{authority}{parts.path.rstrip('/')}"


def _host_port(value: object) -> str:
    if not isinstance(value, str) or len(value) > 260:
        raise InvalidInput("not HOST:PORT")
    host, port = parse_host_port(value, "an instance's address")
    return format_endpoint((_host(host), port))


def _host(host: str) -> str:
    """An IP literal or a DNS name: nothing a resolver or a URL would read otherwise."""
    try:
        return ip_literal(host)
    except InvalidInput:
        # Label by label: one pattern over the whole name backtracks exponentially on a long
        # name that fails at its end.
        labels = host.removesuffix(".").split(".")
        if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
            raise
        return host.lower()


def literal_addresses(listed: tuple[Instance, ...]) -> frozenset[IPAddress]:
    """The IP literals among the instances' hosts (endpoint, DNS, API): no resolver asked."""
    found: set[IPAddress] = set()
    for instance in listed:
        hosts = (host_of(instance.endpoint), host_of(instance.dns))
        for host in (*hosts, urllib.parse.urlsplit(instance.api_url).hostname or ""):
            with contextlib.suppress(InvalidInput):
                found.add(ipaddress.ip_address(ip_literal(host)))
    return frozenset(found)


@dataclass(slots=True)
class Failover:
    """Which instance the agent uses, and when to move: to the next when it has been silent
    for FAILOVER_AFTER_S, and back to the first of all (by URL) once that one has been listed
    live for FAILBACK_AFTER_S. Every agent takes the same order, so they all use the same
    instance whenever it is up: a relayed pair meets at one relay, and the agents of a dead
    instance meet at the same next one. An instance left for its silence (or unusable) is
    not gone back to before a backoff (FAILBACK_AFTER_S, doubling to an hour): one that its
    peers see live but this agent cannot reach must not draw it back every half minute."""

    current: Instance
    known: tuple[Instance, ...] = ()
    silent_since: float | None = None  # the current one's first failure since it last answered
    answering_since: float | None = None  # ... and since when it has answered every request
    # By URL, bounded: listed live since (the list's, MAX_INSTANCES); not back before, with
    # the backoff (kept until it expires, whether listed or not: MAX_SHUNNED).
    listed_since: dict[str, float] = field(default_factory=dict)
    shunned: dict[str, tuple[float, float]] = field(default_factory=dict)

    def heard(self, listed: tuple[Instance, ...], now: float) -> None:
        """The live instances, as the one we use lists them (a watch or join answer). Our own
        entry is found by URL or WireGuard endpoint (the token may name the instance otherwise
        than it names itself) and taken as its spelling; never by its place in the list."""
        if not listed:
            return  # an empty or unreadable list is no news: the one we had stays
        own = self.current
        self.current = next(
            (i for i in listed if i.api_url == own.api_url or i.endpoint == own.endpoint), own
        )
        self.known = listed
        since = self.listed_since
        self.listed_since = {i.api_url: since.get(i.api_url, now) for i in listed}

    def answered(self, now: float) -> None:
        """The current instance answered. Its backoff goes only once it has answered every
        request for FAILBACK_AFTER_S: one that answers a first watch and then fails must not
        draw the agent back every half minute."""
        self.silent_since = None
        if self.answering_since is None:
            self.answering_since = now
        elif now - self.answering_since >= FAILBACK_AFTER_S:
            self.shunned.pop(self.current.api_url, None)

    def failed(self, now: float) -> Instance | None:
        """The current instance failed a request: the one to move to, once it has been silent
        for FAILOVER_AFTER_S and another is known: the next by URL that is not shunned (an
        unusable one is skipped), or the next at all when every other one is."""
        self.answering_since = None
        if self.silent_since is None:
            self.silent_since = now
        if now - self.silent_since < FAILOVER_AFTER_S:
            return None
        ordered = self._ordered()
        at = ordered.index(self.current)
        others = [ordered[(at + step) % len(ordered)] for step in range(1, len(ordered))]
        usable = [other for other in others if not self._shunned(other, now)]
        return next(iter(usable or others), None)

    def home(self, now: float) -> Instance | None:
        """The first instance of all, to move back to: listed live for FAILBACK_AFTER_S and
        not shunned. None while we use it, or it is not due."""
        first = self._ordered()[0]
        since = self.listed_since.get(first.api_url)
        if first == self.current or since is None or now - since < FAILBACK_AFTER_S:
            return None
        return None if self._shunned(first, now) else first

    def moved(self, to: Instance, now: float) -> None:
        """The agent uses `to` now; the one it left is shunned if it had gone silent."""
        if self.silent_since is not None:
            self.unusable(self.current, now)
        self.current, self.silent_since, self.answering_since = to, None, None

    def unusable(self, instance: Instance, now: float) -> None:
        _, last = self.shunned.get(instance.api_url, (0.0, FAILBACK_AFTER_S / 2))
        backoff = min(2 * last, MAX_SHUN_S)
        self.shunned[instance.api_url] = (now + backoff, backoff)
        if len(self.shunned) > MAX_SHUNNED:  # the ones whose wait ends first go first
            kept = sorted(self.shunned.items(), key=lambda item: item[1][0])[-MAX_SHUNNED:]
            self.shunned = dict(kept)

    def _shunned(self, instance: Instance, now: float) -> bool:
        return now < self.shunned.get(instance.api_url, (0.0, 0.0))[0]

    def _ordered(self) -> list[Instance]:
        return sorted(set(self.known) | {self.current})
