"""The change log stays bounded (issue 18): it keeps each peer key's latest change only, and a
follower that last looked before the compaction still learns every peer that changed since,
on both engines. Instance rows of data folders no longer used are forgotten too."""

from __future__ import annotations

from pathlib import Path

from meshpeer.rendezvous.model import Peer
from tests.postgres import RegistryOpener
from tests.test_registry import SMALL, new_key, run


def test_a_compacted_log_still_tells_a_late_follower_every_change(
    tmp_path: Path, open_registry: RegistryOpener
) -> None:
    async def scenario() -> None:
        writer = await open_registry(tmp_path, SMALL)
        follower = await open_registry(tmp_path)  # another process: it looked before all this
        key = new_key()
        for _ in range(3):  # six changes of one key: added and removed by the operator
            await writer.add_peer(key, "laptop")
            await writer.remove_peer("laptop")
        laptop = await writer.add_peer(key, "laptop")
        laptop = await writer.set_lan_endpoints(laptop, (("192.168.1.20", 51820),))
        await writer.add_peer(new_key(), "desk")
        await writer.add_peer(new_key(), "phone")
        await writer.remove_peer("phone")
        deleted = await writer.tidy()
        assert deleted >= 6  # the laptop's earlier changes, and the phone's add
        assert await writer.tidy() == 0  # one row per key is what stays

        await follower.sync()
        peers: dict[str, Peer] = {peer.name: peer for peer in follower.peers()}
        assert set(peers) == {"laptop", "desk"}
        assert peers["laptop"].lan_endpoints == (("192.168.1.20", 51820),)
        assert peers["laptop"].public_key == key
        for registry in (writer, follower):
            await registry.close()

    run(scenario)
