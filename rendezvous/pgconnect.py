"""Reaching the PostgreSQL server `--database` names: the URL's checks, the bounded pool, and
one-line errors that never show the URL's password.

A URL the operator got wrong (not postgresql://, a wrong password, no such database) is an
InvalidInput (exit 2); a server that does not answer is a StoreFailure (exit 1, and a service
manager may restart the rendezvous until it does).
"""

from __future__ import annotations

import urllib.parse

import asyncpg

from meshpeer.common.errors import InvalidInput

from .storage import StoreFailure
from .timers import PG_COMMAND_TIMEOUT_S, PG_CONNECT_TIMEOUT_S, PG_POOL_SIZE

SCHEMES = ("postgresql", "postgres")
# What a lost or refused connection raises, besides PostgreSQL's own errors.
CONNECTION_ERRORS = (OSError, TimeoutError, asyncpg.InterfaceError)
# The server's answers that mean the URL is wrong, not that the server is down.
_REFUSALS = (
    asyncpg.InvalidAuthorizationSpecificationError,  # wrong password, unknown user, pg_hba
    asyncpg.InvalidCatalogNameError,  # no such database
)


def check_url(url: str) -> None:
    """InvalidInput unless `url` parses as a postgresql:// URL."""
    try:
        scheme = urllib.parse.urlsplit(url).scheme
    except ValueError as error:
        raise InvalidInput(
            f"--database is not a URL ({error}): give postgresql://USER:PASSWORD@HOST/DATABASE"
        ) from None
    if scheme not in SCHEMES:
        shown = redacted(url)
        raise InvalidInput(f"--database {shown!r} must be a postgresql://USER@HOST/DATABASE URL")


def redacted(url: str) -> str:
    """The URL as logs and errors may show it: the password replaced."""
    try:
        parts = urllib.parse.urlsplit(url)
        if parts.password is None:
            return url
        host = parts.netloc.rpartition("@")[2]
        return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))
    except ValueError:
        return "(not a URL)"  # unparsable: nothing of it is shown


def one_line(error: BaseException, url: str = "") -> str:
    """The error's first line, with the URL's password masked should a driver quote it."""
    text = str(error).strip().splitlines()
    line = text[0] if text else type(error).__name__
    password = _password(url)
    return line.replace(password, "***") if password else line


def _password(url: str) -> str | None:
    try:
        return urllib.parse.urlsplit(url).password
    except ValueError:
        return None


async def connect_pool(url: str) -> asyncpg.Pool:
    """A pool of at most PG_POOL_SIZE connections to `url`, one of them opened now."""
    check_url(url)
    shown = redacted(url)
    try:
        return await asyncpg.create_pool(
            url,
            min_size=1,
            max_size=PG_POOL_SIZE,
            timeout=PG_CONNECT_TIMEOUT_S,
            command_timeout=PG_COMMAND_TIMEOUT_S,
        )
    except _REFUSALS as error:
        raise InvalidInput(f"--database {shown}: {one_line(error, url)}") from None
    except (ValueError, asyncpg.ClientConfigurationError) as error:
        raise InvalidInput(
            f"--database {shown} is not a usable URL: {one_line(error, url)}"
        ) from None
    except (*CONNECTION_ERRORS, asyncpg.PostgresError) as error:
        raise StoreFailure(f"cannot reach PostgreSQL at {shown}: {one_line(error, url)}") from None
