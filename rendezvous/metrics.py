"""`/metrics` in the Prometheus text exposition format (version 0.0.4)."""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(slots=True)
class ApiCounters:
    requests: collections.Counter[tuple[str, int]] = field(default_factory=collections.Counter)

    def count(self, route: str, status: int) -> None:
        self.requests[(route, status)] += 1


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything `/metrics` reports, gathered at one moment."""

    counts: Mapping[str, int]  # the responder's: handshakes, transport, cookie_replies
    drops: Mapping[str, int]
    under_load: bool
    peers: int
    peers_with_endpoint: int
    api_requests: Mapping[tuple[str, int], int]
    dns: Mapping[str, int]  # DNS answers by rcode, and rate_limited, slipped, truncated, ...
    # What the rendezvous held back from a client: damped endpoint moves, rationed full lists,
    # connections over a client's share.
    held_back: Mapping[str, int] = field(default_factory=dict)
    relay: RelayFigures | None = None


@dataclass(frozen=True, slots=True)
class RelayFigures:
    packets: int
    bytes: int
    pairs: int
    drops: Mapping[str, int]


def render(snapshot: Snapshot) -> str:
    lines: list[str] = []
    counts = snapshot.counts
    _sample(
        lines,
        "handshakes_total",
        "counter",
        "Handshake initiations answered.",
        counts.get("handshakes", 0),
    )
    _sample(
        lines,
        "keepalives_total",
        "counter",
        "Authenticated transport packets received.",
        counts.get("transport", 0),
    )
    _sample(
        lines,
        "cookie_replies_total",
        "counter",
        "Cookie replies sent while under load.",
        counts.get("cookie_replies", 0),
    )
    _metric(lines, "drops_total", "counter", "Datagrams dropped without a reply, by reason.")
    lines.extend(_labelled("drops_total", {(("reason", k),): v for k, v in snapshot.drops.items()}))
    _sample(
        lines,
        "under_load",
        "gauge",
        "1 while initiations need a cookie (mac2).",
        int(snapshot.under_load),
    )
    _sample(lines, "peers", "gauge", "Registered peers.", snapshot.peers)
    _sample(
        lines,
        "peers_with_endpoint",
        "gauge",
        "Peers with a confirmed endpoint.",
        snapshot.peers_with_endpoint,
    )
    _metric(lines, "api_requests_total", "counter", "HTTP API requests, by route and status.")
    api: dict[tuple[tuple[str, str], ...], int] = {
        (("route", route), ("status", str(status))): value
        for (route, status), value in snapshot.api_requests.items()
    }
    lines.extend(_labelled("api_requests_total", api))
    _metric(lines, "dns_total", "counter", "DNS queries by outcome (rcode, rate_limited, ...).")
    lines.extend(_labelled("dns_total", {(("outcome", k),): v for k, v in snapshot.dns.items()}))
    _metric(lines, "held_back_total", "counter", "What a client asked for and did not get.")
    held: dict[tuple[tuple[str, str], ...], int] = {
        (("what", k),): v for k, v in snapshot.held_back.items()
    }
    lines.extend(_labelled("held_back_total", held))
    if snapshot.relay is not None:
        _relay_lines(lines, snapshot.relay)
    return "\n".join(lines) + "\n"


def _relay_lines(lines: list[str], relay: RelayFigures) -> None:
    _sample(lines, "relayed_packets_total", "counter", "Datagrams relayed.", relay.packets)
    _sample(
        lines, "relayed_bytes_total", "counter", "Bytes relayed (as many out as in).", relay.bytes
    )
    _sample(lines, "relayed_pairs", "gauge", "Pairs of peers that relay.", relay.pairs)
    _metric(
        lines, "relay_drops_total", "counter", "Datagrams the relay did not forward, by reason."
    )
    drops: dict[tuple[tuple[str, str], ...], int] = {
        (("reason", k),): v for k, v in relay.drops.items()
    }
    lines.extend(_labelled("relay_drops_total", drops))


def _sample(lines: list[str], name: str, kind: str, help_text: str, value: int) -> None:
    _metric(lines, name, kind, help_text)
    lines.append(f"meshpeer_{name} {value}")


def _metric(lines: list[str], name: str, kind: str, help_text: str) -> None:
    lines.append(f"# HELP meshpeer_{name} {help_text}")
    lines.append(f"# TYPE meshpeer_{name} {kind}")


def _labelled(name: str, values: Mapping[tuple[tuple[str, str], ...], int]) -> Iterable[str]:
    for labels, value in sorted(values.items()):
        text = ",".join(f'{key}="{_escape(label)}"' for key, label in labels)
        yield f"meshpeer_{name}{{{text}}} {value}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
