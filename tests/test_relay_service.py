"""The relay in the whole rendezvous, on loopback: two registered peers, each known by the
mapping its handshake with the rendezvous confirmed, complete a handshake with each other
through the rendezvous's WireGuard port; strangers and non-partners get nothing through."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from meshpeer.rendezvous import settings as config
from meshpeer.rendezvous.handshake import EndpointConfirmed, Responder
from meshpeer.rendezvous.initiator import Initiator
from meshpeer.rendezvous.metrics import render
from meshpeer.rendezvous.noise import public_bytes
from meshpeer.rendezvous.registry import Registry
from meshpeer.rendezvous.service import Rendezvous
from tests.test_service import exchange, free_port


class LoopbackPeer:
    """A peer's one UDP socket: its handshake with the rendezvous, and a responder for others."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.private_key = X25519PrivateKey.generate()
        self.public_key = public_bytes(self.private_key)
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.bind(("127.0.0.1", 0))
        self.socket.setblocking(False)
        self.responder = Responder(self.private_key)

    async def confirm(self, rendezvous: tuple[str, int], rendezvous_key: bytes) -> None:
        initiator = Initiator(self.private_key, rendezvous_key)
        response = await exchange(self.socket, initiator.initiation(time.time()), rendezvous)
        assert response is not None, f"{self.name}: no answer from the rendezvous"
        initiator.receive(response)
        await exchange(self.socket, initiator.keepalive(), rendezvous)


@asynccontextmanager
async def relaying(tmp_path: Path) -> AsyncIterator[tuple[Rendezvous, LoopbackPeer, LoopbackPeer]]:
    wg_port = free_port(socket.SOCK_DGRAM)
    given = config.Overrides(
        wg_listen=f"127.0.0.1:{wg_port}",
        api_listen=f"127.0.0.1:{free_port(socket.SOCK_STREAM)}",
        # Not the default port 53: two runs on one machine (or a resolver there) would collide.
        dns_listen=f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}",
    )
    service = Rendezvous(await Registry.open(tmp_path, given))
    await service.start()
    alice, bob = LoopbackPeer("alice"), LoopbackPeer("bob")
    try:
        for peer in (alice, bob):
            await service.registry.add_peer(peer.public_key, peer.name)
            await peer.confirm(("127.0.0.1", wg_port), service.registry.public_key)
        bob.responder.authorize(alice.public_key)
        yield service, alice, bob
    finally:
        alice.socket.close()
        bob.socket.close()
        await service.stop()


async def relayed_handshake(
    rendezvous: tuple[str, int], alice: LoopbackPeer, bob: LoopbackPeer
) -> Initiator | None:
    """Alice initiates to Bob at the rendezvous's address; Bob answers where it came from."""
    loop = asyncio.get_running_loop()
    initiator = Initiator(alice.private_key, bob.public_key)
    await loop.sock_sendto(alice.socket, initiator.initiation(time.time()), rendezvous)
    try:
        data, source = await asyncio.wait_for(loop.sock_recvfrom(bob.socket, 2048), 0.5)
    except TimeoutError:
        return None
    assert source == rendezvous, "the relay forwards from its own WireGuard socket"
    bob.responder.receive_datagram(data, source, time.time())
    [(response, to)] = bob.responder.datagrams_to_send()
    await loop.sock_sendto(bob.socket, response, to)
    answer = await asyncio.wait_for(loop.sock_recv(alice.socket, 2048), 0.5)
    initiator.receive(answer)
    return initiator


def test_two_partners_complete_a_handshake_through_the_rendezvous(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with relaying(tmp_path) as (service, alice, bob):
            rendezvous = service.registry.settings.wg_listen
            alice_peer = service.registry.peer(alice.public_key)
            assert alice_peer is not None
            await service.registry.set_relay_partners(alice_peer, (bob.public_key,))
            initiator = await relayed_handshake(rendezvous, alice, bob)
            assert initiator is not None and initiator.keys is not None
            loop = asyncio.get_running_loop()
            await loop.sock_sendto(alice.socket, initiator.keepalive(), rendezvous)
            data, source = await asyncio.wait_for(loop.sock_recvfrom(bob.socket, 2048), 0.5)
            bob.responder.receive_datagram(data, source, time.time())
            events = [bob.responder.next_event(), bob.responder.next_event()]
            assert EndpointConfirmed(alice.public_key, rendezvous) in events
            metrics = render(service.snapshot())
            assert "meshpeer_relayed_packets_total 3" in metrics, metrics
            assert "meshpeer_relayed_pairs 1" in metrics

    asyncio.run(scenario())


def test_without_a_pair_or_from_a_stranger_nothing_is_forwarded(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with relaying(tmp_path) as (service, alice, bob):
            rendezvous = service.registry.settings.wg_listen
            assert await relayed_handshake(rendezvous, alice, bob) is None  # no pair asked for
            alice_peer = service.registry.peer(alice.public_key)
            assert alice_peer is not None
            await service.registry.set_relay_partners(alice_peer, (bob.public_key,))
            stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            stranger.bind(("127.0.0.1", 0))
            stranger.setblocking(False)
            with stranger:  # Alice's key, a valid mac1 for Bob, but not Alice's mapping
                initiation = Initiator(alice.private_key, bob.public_key).initiation(time.time())
                await asyncio.get_running_loop().sock_sendto(stranger, initiation, rendezvous)
                await asyncio.sleep(0.2)
            drops = service.relay.drops
            assert drops["not_a_relay_member"] == 2, drops
            assert service.relay.packets == 0

    asyncio.run(scenario())
