"""The accept loop of our own: client shares, and out-of-descriptor errors logged once a minute."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket

import pytest

from meshpeer.rendezvous.listener import (
    ConnectionBudget,
    TcpListener,
    client_network,
    listening_socket,
)


def test_a_client_gets_its_share_and_the_whole_has_a_ceiling() -> None:
    budget = ConnectionBudget(per_client=2, total=3)
    assert budget.acquire("a") and budget.acquire("a")
    assert not budget.acquire("a")  # its share is used
    assert budget.acquire("b")
    assert not budget.acquire("c")  # the whole is used
    budget.release("a")
    assert budget.acquire("c")
    assert budget.refused == 2 and len(budget) == 3


def test_an_ipv6_client_is_its_64_and_a_mapped_ipv4_one_its_address() -> None:
    assert client_network("2001:db8:1:2:aaaa::1") == client_network("2001:db8:1:2:bbbb::9")
    assert client_network("2001:db8:1:3::1") != client_network("2001:db8:1:2::1")
    assert client_network("::ffff:192.0.2.7") == "192.0.2.7"


def test_running_out_of_descriptors_is_logged_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> int:
        sock = listening_socket("127.0.0.1", 0)

        async def serve(connection: socket.socket, client: str) -> None:
            return None

        listener = TcpListener(sock, ConnectionBudget(8, 8), serve, "API")
        for _ in range(1000):  # as when accept() fails with EMFILE in a tight loop
            listener._out_of_resources(OSError(errno.EMFILE, "Too many open files"))
            listener._resume()
        await listener.close(cancel=True)
        return 0

    with caplog.at_level(logging.WARNING, logger="meshpeer.rendezvous.listener"):
        asyncio.run(scenario())
    assert len(caplog.records) == 1
    assert "Too many open files" in caplog.records[0].getMessage()


def test_connections_over_a_clients_share_are_closed_at_once() -> None:
    async def scenario() -> tuple[int, int]:
        sock = listening_socket("127.0.0.1", 0)
        port = sock.getsockname()[1]
        release = asyncio.Event()

        async def serve(connection: socket.socket, client: str) -> None:
            await release.wait()

        listener = TcpListener(sock, ConnectionBudget(3, 100), serve, "test")
        streams = [await asyncio.open_connection("127.0.0.1", port) for _ in range(5)]
        await asyncio.sleep(0.1)
        closed = 0
        for reader, _ in streams:
            try:
                data = await asyncio.wait_for(reader.read(1), 0.2)
                closed += data == b""
            except TimeoutError:
                pass
        release.set()
        await listener.close(cancel=True)
        for _, writer in streams:
            writer.close()
        return closed, listener.budget.refused

    closed, refused = asyncio.run(scenario())
    assert (closed, refused) == (2, 2)
