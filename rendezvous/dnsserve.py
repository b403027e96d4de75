"""The DNS authority (meshpeer.dns.server) on its sockets: UDP, and TCP within budgets.

UDP answers leave from the address each query hit (udp.py) and pass the response rate limiter.
TCP connections are counted per client network and in all (listener.py), idle ones close after
DNS_TCP_IDLE_S and every one after DNS_TCP_LIFETIME_S, and an answer in several messages (AXFR)
is rendered in a thread, one at a time, and kept per serial: one client holding 256
connections or asking for a 50,000-peer zone no longer locks everyone else out.
"""

from __future__ import annotations

import asyncio
import socket

from meshpeer.dns.server import HEADER_SIZE, Authority, Transfer

from .listener import ConnectionBudget, TcpListener, listening_socket
from .timers import (
    DNS_TCP_CONNECTIONS,
    DNS_TCP_CONNECTIONS_PER_CLIENT,
    DNS_TCP_IDLE_S,
    DNS_TCP_LIFETIME_S,
)
from .udp import Address, DatagramEndpoint, open_socket


class DnsServer:
    def __init__(self, authority: Authority, tcp_connections: int = DNS_TCP_CONNECTIONS) -> None:
        self.authority = authority
        self.budget = ConnectionBudget(DNS_TCP_CONNECTIONS_PER_CLIENT, tcp_connections)
        self._udp: DatagramEndpoint | None = None
        self._tcp: TcpListener | None = None
        self._rendering = asyncio.Lock()  # one zone transfer rendered at a time

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()

        def on_datagram(data: bytes, source: Address) -> list[tuple[bytes, Address]]:
            answer = self.authority.answer_udp(data, source[0], loop.time())
            return [(answer, source)] if answer is not None else []

        self._udp = DatagramEndpoint(open_socket(host, port), on_datagram)
        try:
            self._tcp = TcpListener(listening_socket(host, port), self.budget, self._serve, "DNS")
        except OSError:
            self._udp.close()
            raise

    async def stop(self) -> None:
        udp, self._udp = self._udp, None
        tcp, self._tcp = self._tcp, None
        if udp is not None:
            udp.close()
        if tcp is not None:
            await tcp.close(cancel=True)

    async def _serve(self, connection: socket.socket, client: str) -> None:
        reader, writer = await asyncio.open_connection(sock=connection)
        try:
            async with asyncio.timeout(DNS_TCP_LIFETIME_S):
                await self._exchange(reader, writer, client)
        except (asyncio.IncompleteReadError, TimeoutError):
            pass  # the client went away or idled out: nothing to answer
        finally:
            writer.close()

    async def _exchange(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client: str
    ) -> None:
        while True:
            size = int.from_bytes(
                await asyncio.wait_for(reader.readexactly(2), DNS_TCP_IDLE_S), "big"
            )
            if size < HEADER_SIZE:
                return
            query = await asyncio.wait_for(reader.readexactly(size), DNS_TCP_IDLE_S)
            answers = self.authority.answer_tcp(query, client)
            if isinstance(answers, Transfer):
                answers = await self._render(answers)
            for answer in answers:
                writer.write(len(answer).to_bytes(2, "big") + answer)
                await writer.drain()  # a client that stops reading holds only itself up

    async def _render(self, transfer: Transfer) -> list[bytes]:
        """A transfer's messages, rendered in a thread (off the event loop), one at a time."""
        if transfer.rendered is not None:
            return transfer.messages()
        async with self._rendering:
            messages: list[bytes] = await asyncio.to_thread(transfer.messages)
        self.authority.remember_transfer(transfer, messages)
        return messages
