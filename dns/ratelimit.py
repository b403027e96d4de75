"""Response rate limiting (RRL) for UDP answers, so the server cannot be aimed at a third party.

A spoofed query makes us answer the victim, and an answer is bigger than its query. So UDP answers
are limited per client network (a /24 or a /56, since an attacker spoofs whole ranges), with
a token bucket. Past the limit, most answers are dropped. Every `slip`-th one goes out as a tiny
truncated answer, so a real client behind a busy network retries over TCP, which cannot be
spoofed. The table of networks is bounded: the least recently seen network is forgotten first.
"""

from __future__ import annotations

import collections
import enum
import ipaddress
from dataclasses import dataclass

DEFAULT_RESPONSES_PER_S = 100.0  # per client network; an agent asks a few times a minute
DEFAULT_MAX_NETWORKS = 16_384
IPV6_PREFIX = 56


class Verdict(enum.Enum):
    SEND = "send"
    SLIP = "slip"  # send a truncated, empty answer instead
    DROP = "drop"


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float
    limited: int = 0


class ResponseRateLimiter:
    def __init__(
        self,
        responses_per_s: float = DEFAULT_RESPONSES_PER_S,
        *,
        slip: int = 2,
        max_networks: int = DEFAULT_MAX_NETWORKS,
    ) -> None:
        self.rate = responses_per_s
        self.burst = max(1.0, responses_per_s)  # one second's worth
        self.slip = slip
        self.max_networks = max_networks
        self._buckets: collections.OrderedDict[str, _Bucket] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def check(self, client: str, now: float) -> Verdict:
        """May we answer `client` (an IP address) now? Counts the answer if so."""
        network = _network_of(client)
        bucket = self._buckets.get(network)
        if bucket is None:
            bucket = _Bucket(self.burst, now)
            self._buckets[network] = bucket
            if len(self._buckets) > self.max_networks:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(network)
            elapsed = max(0.0, now - bucket.updated)
            bucket.tokens = min(self.burst, bucket.tokens + elapsed * self.rate)
            bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return Verdict.SEND
        bucket.limited += 1
        if self.slip and bucket.limited % self.slip == 0:
            return Verdict.SLIP
        return Verdict.DROP


def _network_of(client: str) -> str:
    """The client's /24 or /56: the key of its bucket."""
    if ":" not in client and client.count(".") == 3:
        # The socket gives IPv4 sources in dotted quads: the /24 is the text before the last dot
        # (ipaddress would cost more than the rest of a cached answer).
        return client.rpartition(".")[0]
    try:
        address = ipaddress.ip_address(client)
    except ValueError:
        return client[:64]
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return str(address.ipv4_mapped).rpartition(".")[0]
    return address.packed[: IPV6_PREFIX // 8].hex()
