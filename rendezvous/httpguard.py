"""Deadlines aiohttp's server does not have: a request's headers must arrive in time.

aiohttp closes a connection that sends nothing, but one that sends a header line now and then
stays open for ever (3,000 of them took every descriptor). `GuardedConnection` wraps aiohttp's
request handler, the protocol of one connection, and closes the connection when no request has
started within `header_timeout_s` of it opening or of the last answer; the API's middleware
tells it when a request starts and ends (a long poll is a request, so it is never cut).
"""

from __future__ import annotations

import asyncio

from .timers import HTTP_HEADER_TIMEOUT_S


class GuardedConnection(asyncio.Protocol):
    def __init__(
        self,
        handler: asyncio.Protocol,
        guards: dict[object, GuardedConnection],
        closed: asyncio.Future[None],
        header_timeout_s: float = HTTP_HEADER_TIMEOUT_S,
    ) -> None:
        self._handler = handler
        self._guards = guards
        self._closed = closed
        self._header_timeout_s = header_timeout_s
        self._transport: asyncio.Transport | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._active = 0

    # -- the protocol: everything goes to aiohttp's handler -----------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # a stream: always a Transport
        self._guards[transport] = self
        self._arm()
        self._handler.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._handler.data_received(data)

    def eof_received(self) -> bool | None:
        return self._handler.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._guards.pop(self._transport, None)
        try:
            self._handler.connection_lost(exc)
        finally:
            if not self._closed.done():
                self._closed.set_result(None)

    def pause_writing(self) -> None:
        self._handler.pause_writing()

    def resume_writing(self) -> None:
        self._handler.resume_writing()

    # -- what the middleware says -------------------------------------------------------------

    def request_started(self) -> None:
        self._active += 1
        self._disarm()

    def request_finished(self) -> None:
        self._active -= 1
        if self._active == 0:
            self._arm()

    def _arm(self) -> None:
        self._disarm()
        loop = asyncio.get_running_loop()
        self._deadline = loop.call_later(self._header_timeout_s, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if self._active == 0 and self._transport is not None:
            self._transport.abort()
