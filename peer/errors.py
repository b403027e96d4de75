"""The agent's errors that reach its command line: a user's mistake (exit 2) or a failure
(exit 1), each with a one-line message that says what to do."""

from __future__ import annotations

from meshpeer.common.errors import Failure, UsageError


class AgentError(UsageError):
    """A user-fixable problem (exit 2): the message says what to do."""


class AgentFailed(Failure):
    """One of the agent's loops failed (exit 1: a service manager restarts it)."""


class Stopped(Exception):
    """SIGINT or SIGTERM came while starting: nothing was made yet, or it was taken down."""


class BackendError(Failure):
    """The interface could not be made or driven; the message says what to fix."""


class MissingTool(UsageError, BackendError):
    """Something to install (wireguard-go): a user-fixable problem."""
