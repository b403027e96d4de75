"""The DNS authority (meshpeer.dns.server) on its sockets: UDP, and TCP within budgets.

UDP answers leave from the address each query hit (udp.py) and pass the response rate limiter.
TCP connections are counted per client network and in all (listener.py), idle ones close after
DNS_TCP_IDLE_S and every one after DNS_TCP_LIFETIME_S, and an answer in several messages (AXFR)
is rendered in a process of its own, one at a time, and kept per serial: one client holding 256
connections or asking for a 50,000-peer zone no longer locks everyone else out.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import socket
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

import dns.message

from meshpeer.common.endpoints import Endpoint
from meshpeer.dns.records import ZoneSnapshot
from meshpeer.dns.server import HEADER_SIZE, Authority, Transfer, render_transfer

from .listener import ConnectionBudget, TcpListener, listening_socket
from .timers import (
    DNS_TCP_CONNECTIONS,
    DNS_TCP_CONNECTIONS_PER_CLIENT,
    DNS_TCP_IDLE_S,
    DNS_TCP_LIFETIME_S,
)
from .udp import DatagramEndpoint, open_socket


class DnsServer:
    def __init__(self, authority: Authority, tcp_connections: int = DNS_TCP_CONNECTIONS) -> None:
        self.authority = authority
        self.budget = ConnectionBudget(DNS_TCP_CONNECTIONS_PER_CLIENT, tcp_connections)
        self._udp: DatagramEndpoint | None = None
        self._tcp: TcpListener | None = None
        self._rendering = asyncio.Lock()  # one zone transfer rendered at a time
        self._renderers: set[BaseProcess] = set()

    async def start(self, host: str, port: int) -> None:
        self._udp = DatagramEndpoint(open_socket(host, port), self._on_datagram)
        try:
            self._tcp = TcpListener(listening_socket(host, port), self.budget, self._serve, "DNS")
        except OSError:
            self._udp.close()
            raise

    def _on_datagram(
        self, data: bytes, source: Endpoint, now: float
    ) -> list[tuple[bytes, Endpoint]]:
        answer = self.authority.answer_udp(data, source[0], now)
        return [(answer, source)] if answer is not None else []

    @property
    def udp_drops(self) -> dict[str, int]:
        """Queries the UDP socket dropped before the authority saw them (oversized)."""
        return dict(self._udp.drops) if self._udp is not None else {}

    async def stop(self) -> None:
        udp, self._udp = self._udp, None
        tcp, self._tcp = self._tcp, None
        if udp is not None:
            udp.close()
        if tcp is not None:
            await tcp.close(cancel=True)
        for process in list(self._renderers):  # a stop never waits for a transfer
            process.kill()

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
            async with asyncio.timeout(DNS_TCP_IDLE_S):  # not wait_for: common/events.py says why
                size = int.from_bytes(await reader.readexactly(2), "big")
            if size < HEADER_SIZE:
                return
            async with asyncio.timeout(DNS_TCP_IDLE_S):
                query = await reader.readexactly(size)
            answers = self.authority.answer_tcp(query, client)
            if isinstance(answers, Transfer):
                answers = await self._render(answers)
            for answer in answers:
                writer.write(len(answer).to_bytes(2, "big") + answer)
                await writer.drain()  # a client that stops reading holds only itself up

    async def _render(self, transfer: Transfer) -> list[bytes]:
        """A transfer's messages, rendered once per serial in a process of its own: at 50,000
        peers that is 14 s of CPU, which in a thread took the GIL from the event loop (the
        API's p99 went to 70-120 ms) and in the loop stalled everything."""
        if transfer.rendered is not None or transfer.zone is None:
            return transfer.messages()
        async with self._rendering:
            transfer = self.authority.kept_transfer(transfer)  # made while this one waited?
            if transfer.rendered is not None or transfer.zone is None:
                return transfer.messages()
            messages = await self._in_process(transfer.query.to_wire(), transfer.zone)
        self.authority.remember_transfer(transfer, messages)
        return messages

    async def _in_process(self, query: bytes, zone: ZoneSnapshot) -> list[bytes]:
        context = multiprocessing.get_context("spawn")  # never fork a process with threads
        receiving, sending = context.Pipe(duplex=False)
        process = context.Process(target=_render_child, args=(sending, query, zone), daemon=True)
        await asyncio.to_thread(process.start)  # it pickles the zone: off the loop too
        sending.close()
        self._renderers.add(process)
        try:
            messages: list[bytes] = await asyncio.to_thread(receiving.recv)
        except EOFError:
            raise ConnectionError("the zone transfer's renderer died") from None
        finally:
            receiving.close()
            self._renderers.discard(process)
            if process.is_alive():
                process.kill()
            await asyncio.to_thread(process.join, 1)
        return messages


def _render_child(sending: Connection, query: bytes, zone: ZoneSnapshot) -> None:
    """In the renderer process: the transfer's messages, sent back whole."""
    sending.send(list(render_transfer(dns.message.from_wire(query), zone)))
    sending.close()
