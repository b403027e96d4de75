"""Full peer lists: shared per revision, rebuilt from kept per-peer JSON, rationed per caller."""

from __future__ import annotations

import asyncio
import ipaddress
import json
from dataclasses import replace

import pytest

from meshpeer.rendezvous.model import Peer
from meshpeer.rendezvous.snapshots import SnapshotCache, SnapshotRation, SnapshotRationed


def peers(count: int) -> list[Peer]:
    return [
        Peer(
            bytes([n % 256, n // 256]) * 16,
            f"p{n}",
            ipaddress.ip_address(f"10.77.{n // 250}.{n % 250 + 2}"),
        )
        for n in range(count)
    ]


def test_a_full_list_is_the_peers_json_and_follows_every_change() -> None:
    async def scenario() -> None:
        cache, listed = SnapshotCache(), peers(1200)
        body = json.loads(await cache.body("e", 1, listed))
        assert (
            body["full"] and body["removed"] == [] and (body["epoch"], body["revision"]) == ("e", 1)
        )
        assert body["peers"] == [peer.to_json() for peer in listed]
        assert await cache.body("e", 1, []) is await cache.body("e", 1, [])  # shared per revision
        moved = replace(listed[7], endpoint=("198.51.100.1", 4000))
        changed = [moved, *listed[8:]]  # one moved, seven removed
        body = json.loads(await cache.body("e", 2, changed))
        assert body["peers"] == [peer.to_json() for peer in changed]
        assert len(cache._fragments) == len(changed)  # the removed ones are forgotten

    asyncio.run(scenario())


def test_each_caller_gets_two_full_lists_then_one_per_interval() -> None:
    ration = SnapshotRation(interval_s=10)
    ration.take(b"a", 0.0)
    ration.take(b"a", 0.1)
    with pytest.raises(SnapshotRationed) as refused:
        ration.take(b"a", 0.2)
    assert 9 < refused.value.retry_after_s <= 10
    ration.take(b"b", 0.3)  # another caller has its own
    ration.take(b"a", 10.5)
    assert ration.refused == 1
