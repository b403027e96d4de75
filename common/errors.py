"""meshpeer's two families of errors, as both command lines report them.

Every error that can reach a `main()` derives from one of two classes, so each command line
catches exactly these two: a `UsageError` is the user's to fix (exit 2), a `Failure` is not
(exit 1, and a service manager may restart). Either carries one line that says what happened
and what to do.
"""

from __future__ import annotations


class UsageError(Exception):
    """A user mistake; the message says what to fix (exit 2)."""


class Failure(Exception):
    """Not the user's mistake, but still one line to explain it (exit 1)."""


class InvalidInput(UsageError, ValueError):
    """A value that is not what it must be, from a user or from the network; the message says
    what it must be. (A ValueError too, so parsers of hostile input can treat it as one.)"""
