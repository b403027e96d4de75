"""TCP listeners no stranger can exhaust: connections per client network and in all, accept
errors logged once a minute, and each connection served by a task of its own.

asyncio's own servers accept whatever comes, and when the process runs out of descriptors they
log a traceback for every failed accept (214 MB of log in 60 s under a slowloris). Here the
accept loop is ours: a connection over its client's share is closed at once, a full process
pauses accepting for a moment, and the error is logged once a minute with a count.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from .timers import ACCEPT_PAUSE_S, RESOURCE_WARNING_EVERY_S

logger = logging.getLogger("meshpeer.rendezvous.listener")

ACCEPT_BATCH = 64  # connections accepted per wake-up before other work gets a turn
_RESOURCE_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}

Serve = Callable[[socket.socket, str], Awaitable[None]]


def client_network(address: str) -> str:
    """Whom a connection counts against: the IPv4 address, or the IPv6 /64 (one subscriber)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


@dataclass(slots=True)
class ConnectionBudget:
    """Open connections per client network and in all (sans-I/O); bounded by `total`."""

    per_client: int
    total: int
    refused: int = 0
    _open: collections.Counter[str] = field(default_factory=collections.Counter)

    def acquire(self, client: str) -> bool:
        if self._open[client] >= self.per_client or sum(self._open.values()) >= self.total:
            self.refused += 1
            return False
        self._open[client] += 1
        return True

    def release(self, client: str) -> None:
        self._open[client] -= 1
        if self._open[client] <= 0:
            del self._open[client]

    def __len__(self) -> int:
        return sum(self._open.values())


class TcpListener:
    """Accepts on `sock` and runs `serve(connection, client_address)` for each, within budget."""

    def __init__(self, sock: socket.socket, budget: ConnectionBudget, serve: Serve, name: str):
        self.sock = sock
        self.budget = budget
        self.name = name
        self._serve = serve
        self._loop = asyncio.get_running_loop()
        self._tasks: set[asyncio.Task[None]] = set()
        self._warned_at: float | None = None
        self._unwarned = 0
        sock.setblocking(False)
        self._loop.add_reader(sock.fileno(), self._accept)

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                connection, address = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                if error.errno not in _RESOURCE_ERRORS:
                    raise
                self._out_of_resources(error)
                return
            self._admit(connection, str(address[0]))

    def _admit(self, connection: socket.socket, address: str) -> None:
        client = client_network(address)
        if not self.budget.acquire(client):
            connection.close()
            return
        connection.setblocking(False)
        task = self._loop.create_task(self._run(connection, client, address))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, connection: socket.socket, client: str, address: str) -> None:
        try:
            await self._serve(connection, address)
        except (ConnectionError, TimeoutError, OSError):
            pass  # the client went away or took too long: nothing to answer
        finally:
            self.budget.release(client)
            connection.close()

    def _out_of_resources(self, error: OSError) -> None:
        self._unwarned += 1
        now = self._loop.time()
        if self._warned_at is None or now - self._warned_at >= RESOURCE_WARNING_EVERY_S:
            logger.warning(
                "%s: cannot accept connections (%s), %d times since the last warning; %d open",
                self.name,
                error.strerror,
                self._unwarned,
                len(self.budget),
            )
            self._warned_at, self._unwarned = now, 0
        self._loop.remove_reader(self.sock.fileno())
        self._loop.call_later(ACCEPT_PAUSE_S, self._resume)

    def _resume(self) -> None:
        if self.sock.fileno() >= 0:
            self._loop.add_reader(self.sock.fileno(), self._accept)

    async def close(self, *, cancel: bool) -> None:
        """Stop accepting; with `cancel`, end the connections being served too."""
        if self.sock.fileno() >= 0:
            self._loop.remove_reader(self.sock.fileno())
            self.sock.close()
        if cancel:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)


def listening_socket(host: str, port: int, backlog: int = 1024) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and host in ("::", ""):
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock
