"""The whole rendezvous on loopback: handshakes reach the registry, and survive a restart."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from meshpeer.rendezvous import settings as config
from meshpeer.rendezvous.initiator import Initiator
from meshpeer.rendezvous.noise import public_bytes
from meshpeer.rendezvous.registry import Registry
from meshpeer.rendezvous.service import Rendezvous


def free_port(kind: socket.SocketKind) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def exchange(client: socket.socket, datagram: bytes, to: tuple[str, int]) -> bytes | None:
    loop = asyncio.get_running_loop()
    await loop.sock_sendto(client, datagram, to)
    try:
        return await asyncio.wait_for(loop.sock_recv(client, 2048), 0.5)
    except TimeoutError:
        return None


def test_a_recorded_initiation_stays_refused_after_a_restart(tmp_path: Path) -> None:
    wg_port = free_port(socket.SOCK_DGRAM)
    given = config.Overrides(
        wg_listen=f"127.0.0.1:{wg_port}",
        api_listen=f"127.0.0.1:{free_port(socket.SOCK_STREAM)}",
        # Not the default port 53: two runs on one machine (or a resolver there) would collide.
        dns_listen=f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}",
    )
    rendezvous = ("127.0.0.1", wg_port)
    peer_key = X25519PrivateKey.generate()

    async def serve() -> Rendezvous:
        service = Rendezvous(await Registry.open(tmp_path, given))
        await service.start()
        return service

    async def scenario() -> None:
        service = await serve()
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            await service.registry.add_peer(public_bytes(peer_key), "laptop")
            initiator = Initiator(peer_key, service.registry.public_key)
            client.bind(("127.0.0.1", 0))
            client.setblocking(False)
            recorded = initiator.initiation(time.time())
            response = await exchange(client, recorded, rendezvous)
            assert response is not None
            initiator.receive(response)
            await exchange(client, initiator.keepalive(), rendezvous)
            peer = service.registry.peer(public_bytes(peer_key))
            assert peer is not None and peer.endpoint == client.getsockname()
            await service.stop()  # writes the observations behind, as SIGTERM does

            service = await serve()
            assert await exchange(client, recorded, rendezvous) is None
            assert service.responder.drops["replayed_initiation"] == 1
            fresh = initiator.initiation(time.time())
            assert await exchange(client, fresh, rendezvous) is not None
        finally:
            client.close()
            await service.stop()

    asyncio.run(scenario())
