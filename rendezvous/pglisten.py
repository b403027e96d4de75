"""How the instances sharing one PostgreSQL database hear of each other's commits: LISTEN/NOTIFY.

Every transaction that numbers a change also sends NOTIFY on CHANNEL (pgstore.py). PostgreSQL
delivers a notification only when that transaction commits, never for one rolled back, and
after the rows it announces are visible. Each instance holds one dedicated connection that
LISTENs (a pooled connection would be handed to a query and miss them) and answers each
notification by nudging its follower, which reads every change after the last one it applied
(following.py). The notification carries nothing else: the change log is the truth, so a
notification lost with its connection costs a delay, not a change. When the connection is
lost, a new one LISTENs and the follower is nudged at once to catch up on what committed
meanwhile; the follower's own slow poll bounds the delay should even that fail.

Why not logical replication: it streams every row of every table to every instance, needs
wal_level=logical, a publication and a replication slot per instance (a slot whose instance
is gone holds back WAL until the disk fills), and a decoder of its wire format. What the
instances need is a wake-up after a commit whose content they can read from the change log
they already keep; LISTEN/NOTIFY is exactly that, on a stock server and an ordinary role.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import asyncpg

from .pgconnect import CONNECTION_ERRORS, one_line, redacted
from .timers import FOLLOW_SAFETY_POLL_S, PG_CONNECT_TIMEOUT_S, PG_LISTEN_RETRY_S

CHANNEL = "meshpeer_changes"
# What pg_stat_activity shows for the listening connection (an operator, and the tests, find it).
LISTENER_NAME = "meshpeer-follow"

logger = logging.getLogger("meshpeer.rendezvous.registry")


async def follow_notifications(url: str, nudge: Callable[[], None]) -> None:
    """Until cancelled: nudge on every notification, and after every (re)connection."""
    while True:
        try:
            await _listen_until_lost(url, nudge)
        except (*CONNECTION_ERRORS, asyncpg.PostgresError) as error:
            logger.warning(
                "cannot listen for other instances' changes at %s (%s); polling every %.0f s "
                "until it can",
                redacted(url),
                one_line(error, url),
                FOLLOW_SAFETY_POLL_S,
            )
        await asyncio.sleep(PG_LISTEN_RETRY_S)


async def _listen_until_lost(url: str, nudge: Callable[[], None]) -> None:
    lost = asyncio.Event()
    connection = await asyncpg.connect(
        url, timeout=PG_CONNECT_TIMEOUT_S, server_settings={"application_name": LISTENER_NAME}
    )
    try:
        connection.add_termination_listener(lambda _connection: lost.set())

        def on_notification(*_arguments: Any) -> None:
            nudge()

        await connection.add_listener(CHANNEL, on_notification)
        nudge()  # changes that committed while nobody listened
        await lost.wait()
        logger.warning("lost the connection that listens for other instances' changes")
    finally:
        with contextlib.suppress(*CONNECTION_ERRORS, asyncpg.PostgresError):
            await connection.close(timeout=PG_CONNECT_TIMEOUT_S)
