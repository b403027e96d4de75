"""The HTTP API (api.py) on its socket: TLS, connections counted per client, deadlines.

aiohttp's own sites accept whatever comes and wait up to a minute for a TLS handshake; here the
accept loop is listener.py's (a share per client network, errors logged once a minute), the
TLS handshake gets TLS_HANDSHAKE_TIMEOUT_S, each connection's headers HTTP_HEADER_TIMEOUT_S
(httpguard.py), and a stop waits HTTP_SHUTDOWN_S for answers in flight.
"""

from __future__ import annotations

import asyncio
import socket
import ssl

from aiohttp import web

from .api import GUARDS
from .httpguard import GuardedConnection
from .listener import ConnectionBudget, TcpListener, listening_socket
from .timers import (
    HTTP_CONNECTIONS_PER_CLIENT,
    HTTP_KEEPALIVE_S,
    HTTP_SHUTDOWN_S,
    TLS_HANDSHAKE_TIMEOUT_S,
)


class ApiServer:
    def __init__(
        self, app: web.Application, tls: ssl.SSLContext | None, total_connections: int
    ) -> None:
        self.app = app
        self.tls = tls
        self.budget = ConnectionBudget(HTTP_CONNECTIONS_PER_CLIENT, total_connections)
        self._runner = web.AppRunner(
            app,
            access_log=None,
            shutdown_timeout=HTTP_SHUTDOWN_S,
            keepalive_timeout=HTTP_KEEPALIVE_S,
        )
        self._listener: TcpListener | None = None

    async def start(self, host: str, port: int) -> None:
        await self._runner.setup()
        sock = listening_socket(host, port)
        self._listener = TcpListener(sock, self.budget, self._serve, "API")

    async def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            await listener.close(cancel=False)
        await self._runner.cleanup()

    async def _serve(self, connection: socket.socket, client: str) -> None:
        loop = asyncio.get_running_loop()
        closed: asyncio.Future[None] = loop.create_future()
        server = self._runner.server
        if server is None:  # not set up, or already stopped
            return

        def guarded() -> GuardedConnection:
            return GuardedConnection(server(), self.app[GUARDS], closed)

        await loop.connect_accepted_socket(
            guarded,
            connection,
            ssl=self.tls,
            ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT_S if self.tls else None,
        )
        await closed
