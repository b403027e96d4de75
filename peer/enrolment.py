"""The agent's side of joining.py: start the key-and-join process, and read how it went (it
also reads an API certificate the agent has not seen: the pin's check, pinning.py).

The process is ours, but its answer is still read as data: bounded, typed, and anything else is
a failure with a message, never a crash of `run`. A stop while it runs kills it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshpeer.common.errors import InvalidInput
from meshpeer.common.keys import parse_key

from .errors import AgentError, AgentFailed

# The outcome names a key, a message and at most a few dozen pending routes.
MAX_OUTCOME_BYTES = 65536


class EnrolmentFailed(AgentError):
    """The key or the join could not be made; the message says what to fix."""


@dataclass(frozen=True, slots=True)
class Enrolled:
    public_key: bytes
    joined: bool = False  # the membership in the state folder is the one just given
    pending: tuple[str, ...] = ()  # routes asked for that wait for the operator
    refused: str | None = None  # the rendezvous said no: the user must act
    unreachable: str | None = None  # no answer: try again later


async def enrol(
    state_dir: Path,
    token: str | None = None,
    name: str = "",
    routes: tuple[str, ...] = (),
    time_ms: int = 0,
) -> Enrolled:
    """Our public key (the key made first if need be), and with a token, the join's outcome."""
    request: dict[str, Any] = {"state_dir": str(state_dir), "token": token, "name": name}
    request.update(routes=list(routes), time_ms=time_ms)
    output, exit_code = await _ask(request)
    return outcome(output, exit_code)


async def certificate_pin(state_dir: Path, der: bytes) -> str:
    """The pin of an API certificate not seen before, as the join process reads it (it also
    remembers the certificate in the state folder when it holds the membership's pin); ""
    when it is not a certificate or no answer came."""
    request = {"state_dir": str(state_dir), "certificate": base64.b64encode(der).decode()}
    output, _ = await _ask(request)
    try:
        pin = json.loads(output).get("pin")
    except (ValueError, AttributeError, RecursionError):
        return ""
    return pin if isinstance(pin, str) else ""


async def _ask(request: dict[str, Any]) -> tuple[bytes, int | None]:
    """The join process's answer to one request, and its exit code; killed if we are
    cancelled (a stop, or a request's timeout)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "meshpeer.peer.joining",
        str(os.getpid()),  # it ends with us, even when we are SIGKILLed
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        # A session of its own: a terminal's Ctrl-C reaches the agent only, which kills this
        # process. Sent to both, it came during the process's imports (a traceback), or ended
        # it before the agent's stop began ('ended without an answer', exit 1).
        start_new_session=True,
    )
    try:
        output, _ = await process.communicate(json.dumps(request).encode())
    finally:
        if process.returncode is None:
            process.kill()
            await asyncio.shield(process.wait())
    return output[:MAX_OUTCOME_BYTES], process.returncode


def outcome(output: bytes, exit_code: int | None) -> Enrolled:
    try:
        answer = json.loads(output)
        if not isinstance(answer, dict):
            raise TypeError("not an object")
    except (ValueError, TypeError, RecursionError):
        raise AgentFailed(
            f"the join process ended without an answer (exit code {exit_code}); "
            "run `meshpeer run` again, and report it if it repeats"
        ) from None
    if isinstance(answer.get("failed"), str):
        raise EnrolmentFailed(answer["failed"][:500])
    return _enrolled(answer)


def _enrolled(answer: dict[str, Any]) -> Enrolled:
    try:
        public_key = parse_key(answer.get("public_key"))
    except InvalidInput:
        raise AgentFailed("the join process answered without a usable public key") from None
    pending = answer.get("pending", [])
    return Enrolled(
        public_key,
        joined=answer.get("joined") is True,
        pending=tuple(str(route)[:64] for route in pending[:64])
        if isinstance(pending, list)
        else (),
        refused=_message(answer.get("refused")),
        unreachable=_message(answer.get("unreachable")),
    )


def _message(value: object) -> str | None:
    return value[:500] if isinstance(value, str) else None
