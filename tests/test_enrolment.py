"""The key and the join in a process of their own (joining.py, enrolment.py), against a real
rendezvous API over TLS on loopback: the agent that starts it never loads cryptography."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from meshpeer.common import pinning, tokens
from meshpeer.common.keys import encode_key
from meshpeer.peer import enrolment
from meshpeer.peer.errors import AgentError, AgentFailed
from meshpeer.peer.state import StateDir
from meshpeer.rendezvous import tls
from tests.test_client_tls import served


def public_of(state: StateDir) -> bytes:
    private = state.private_key()
    assert private is not None
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def test_a_first_join_makes_the_key_and_saves_membership_key_and_certificate(
    tmp_path: Path,
) -> None:
    state = StateDir(tmp_path / "state")
    state.prepare()

    async def scenario() -> enrolment.Enrolled:
        async with served(tmp_path) as service:
            token = await service.registry.create_token(1, 60)
            return await enrolment.enrol(state.path, token, "laptop", ("10.9.0.0/24",), 1)

    enrolled = asyncio.run(scenario())
    assert enrolled.joined and enrolled.refused is None and enrolled.unreachable is None
    assert enrolled.pending == ("10.9.0.0/24",)  # routes wait for the operator
    assert enrolled.public_key == public_of(state) == state.public_key()
    membership = state.membership()
    assert membership is not None and membership.name == "laptop"
    files = tmp_path / "tls.crt"
    der = ssl.PEM_cert_to_DER_cert(files.read_text())
    assert state.certificates() == (pinning.certificate_digest(der),)
    assert (state.path / "key").stat().st_mode & 0o777 == 0o600


def test_a_certificate_not_seen_before_is_read_by_the_join_process(tmp_path: Path) -> None:
    """The agent's pin check for a renewed certificate, or another instance's: the join
    process reads it, and keeps it in the state folder when it holds the membership's pin."""
    state = StateDir(tmp_path / "state")
    state.prepare()

    async def scenario() -> None:
        async with served(tmp_path) as service:
            token = await service.registry.create_token(1, 60)
            await enrolment.enrol(state.path, token, "laptop", (), 1)

    asyncio.run(scenario())
    der = ssl.PEM_cert_to_DER_cert((tmp_path / "tls.crt").read_text())
    (state.path / "tls-certificates.json").unlink()
    membership = state.membership()
    assert membership is not None and membership.tls_pin
    assert asyncio.run(enrolment.certificate_pin(state.path, der)) == membership.tls_pin
    assert state.certificates() == (pinning.certificate_digest(der),)
    other = tmp_path / "other"
    other.mkdir()
    other_der = ssl.PEM_cert_to_DER_cert(tls.ensure_self_signed(other, "h").cert.read_text())
    assert asyncio.run(enrolment.certificate_pin(state.path, other_der)) not in (
        "",
        membership.tls_pin,
    )
    assert asyncio.run(enrolment.certificate_pin(state.path, b"\x30\x00")) == ""
    assert state.certificates() == (pinning.certificate_digest(der),)  # only the pinned one


def test_a_refused_token_and_a_silent_api_say_so_and_keep_the_key(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    state.prepare()

    async def scenario() -> tuple[enrolment.Enrolled, enrolment.Enrolled]:
        async with served(tmp_path) as service:
            token = await service.registry.create_token(1, 60)
            (tmp_path / "other").mkdir()
            await enrolment.enrol(tmp_path / "other", token, "desktop", (), 1)
            refused = await enrolment.enrol(state.path, token, "laptop", (), 2)  # used up
        closed = await enrolment.enrol(state.path, token, "laptop", (), 3)  # nobody listens
        return refused, closed

    refused, closed = asyncio.run(scenario())
    assert refused.refused and not refused.joined and refused.public_key == public_of(state)
    assert closed.unreachable and "cannot reach https://127.0.0.1:" in closed.unreachable
    assert closed.public_key == refused.public_key  # one key, made once


def test_a_token_naming_a_low_order_key_is_refused_in_one_line(tmp_path: Path) -> None:
    """Seen while writing the tests: an all-zero rendezvous key raised X25519's ValueError."""
    token = tokens.JoinToken("https://127.0.0.1:9", bytes(32), bytes(32), None).encode()
    enrolled = asyncio.run(enrolment.enrol(tmp_path, token, "pc", (), 1))
    assert enrolled.refused and "make a new token" in enrolled.refused


def test_without_a_token_it_only_makes_the_key(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    enrolled = asyncio.run(enrolment.enrol(state.path))
    assert not enrolled.joined and enrolled.public_key == public_of(state)
    assert state.membership() is None


def test_a_key_put_in_by_hand_is_derived_again(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    first = asyncio.run(enrolment.enrol(state.path)).public_key
    other = X25519PrivateKey.generate()
    state.save_private_key(other.private_bytes_raw())
    assert state.public_key() is None  # key.pub names another key now
    again = asyncio.run(enrolment.enrol(state.path)).public_key
    assert again == other.public_key().public_bytes_raw() != first
    assert state.public_key() == again


def test_a_damaged_key_file_is_one_line_to_fix(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("not a key\n")
    with pytest.raises(AgentError, match=r"key is not a WireGuard private key; remove it"):
        asyncio.run(enrolment.enrol(tmp_path))


@pytest.mark.parametrize(
    "output",
    [
        b"",
        b"Traceback (most recent call last):",
        b"[1]",
        b'{"public_key": "short"}',
        b"\xff",
        b"[" * 100_000,  # RecursionError, seen in the review of the join process
    ],
)
def test_an_answer_that_is_not_the_join_process_s_is_a_failure(output: bytes) -> None:
    with pytest.raises(AgentFailed, match="join process"):
        enrolment.outcome(output, 1)


def test_the_answer_is_read_as_data() -> None:
    key = encode_key(bytes(32))
    answer = {"public_key": key, "pending": ["x" * 100] * 100, "refused": 7, "joined": "yes"}
    enrolled = enrolment.outcome(json.dumps(answer).encode(), 0)
    assert len(enrolled.pending) == 64 and len(enrolled.pending[0]) == 64
    assert enrolled.refused is None and not enrolled.joined


def joining_processes() -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"meshpeer.peer.joining" in command and int(pid) != os.getpid():
            found.append(int(pid))
    return found


@pytest.fixture
def silent_api_token() -> Iterator[str]:
    """A join token for an API on loopback that takes the connection and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    rendezvous_key = X25519PrivateKey.generate().public_key().public_bytes_raw()
    url = f"https://127.0.0.1:{port}"
    try:
        yield tokens.JoinToken(url, bytes(32), rendezvous_key, None).encode()
    finally:
        listener.close()


def join_process_of(agent: subprocess.Popen[bytes]) -> int:
    """The join process `agent` started, once it has."""
    deadline = time.monotonic() + 10
    while not (started := [p for p in joining_processes() if parent_of(p) == agent.pid]):
        assert time.monotonic() < deadline, "the join process never started"
        time.sleep(0.001)
    return started[0]


def test_a_stop_while_joining_ends_the_join_process(tmp_path: Path, silent_api_token: str) -> None:
    """An API that takes the connection and never answers: the stop must not wait for it."""
    token = silent_api_token

    async def scenario() -> float:
        task = asyncio.create_task(enrolment.enrol(tmp_path, token, "pc", (), 1))
        await asyncio.sleep(1.5)  # the process has started and is waiting on TLS
        assert joining_processes()
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.monotonic() - started

    assert asyncio.run(scenario()) < 2
    assert joining_processes() == []


def test_a_pin_answer_nested_too_deep_is_no_pin(monkeypatch: pytest.MonkeyPatch) -> None:
    """Review of the join process: its answer to a certificate went through json.loads with
    ValueError and AttributeError caught; RecursionError left the agent's pin check."""

    async def deep(_: dict[str, object]) -> tuple[bytes, int | None]:
        return b"[" * 100_000, 0

    monkeypatch.setattr(enrolment, "_ask", deep)
    assert asyncio.run(enrolment.certificate_pin(Path("/nonexistent"), b"\x30\x00")) == ""


def test_state_files_nested_too_deep_read_as_absent(tmp_path: Path) -> None:
    """Review of the join process: key.pub and tls-certificates.json are read with ValueError
    caught, and a file of '[' (damaged, or put there) raised RecursionError at every start."""
    state = StateDir(tmp_path)
    asyncio.run(enrolment.enrol(state.path))
    (tmp_path / "key.pub").write_text('{"a":' * 100_000)
    (tmp_path / "tls-certificates.json").write_text("[" * 100_000)
    assert state.public_key() is None
    assert state.certificates() == ()


STOPPED_BY_CTRL_C = """
import asyncio, signal, sys
from pathlib import Path
from meshpeer.peer import enrolment

async def main():
    task = asyncio.create_task(enrolment.enrol(Path(sys.argv[1]), sys.argv[2], "pc", (), 1))
    loop = asyncio.get_running_loop()  # the agent's stop takes a moment to reach the join
    loop.add_signal_handler(signal.SIGINT, lambda: loop.call_later(0.5, task.cancel))
    try:
        await task
    except asyncio.CancelledError:
        print("stopped", flush=True)

asyncio.run(main())
"""


def test_ctrl_c_as_the_join_process_starts_prints_no_traceback(
    tmp_path: Path, silent_api_token: str
) -> None:
    """Review of the join process: a terminal's Ctrl-C reaches the whole foreground process
    group, and the join process set SIGINT's default only once its imports were done (about
    0.1 s here, far longer on a small board): a KeyboardInterrupt traceback from it, and
    sometimes `run` ending with 'the join process ended without an answer' (exit 1)."""
    agent = subprocess.Popen(
        [sys.executable, "-c", STOPPED_BY_CTRL_C, str(tmp_path), silent_api_token],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # a process group of its own, as a terminal's job has
    )
    try:
        join_process_of(agent)
        time.sleep(0.03)  # it is importing: its imports take ~0.1 s
        os.killpg(agent.pid, signal.SIGINT)  # Ctrl-C
        output, errors = agent.communicate(timeout=10)
    finally:
        if agent.poll() is None:
            agent.kill()
    assert b"Traceback" not in errors, errors.decode()[-2000:]
    assert output == b"stopped\n" and agent.returncode == 0


def parent_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rpartition(") ")[2].split()[1])
    except (OSError, ValueError, IndexError):
        return None


JOINING_AGENT = """
import asyncio, sys
from pathlib import Path
from meshpeer.peer import enrolment

asyncio.run(enrolment.enrol(Path(sys.argv[1]), sys.argv[2], "pc", (), 1))
"""


def test_the_join_process_ends_with_an_agent_killed_by_sigkill(
    tmp_path: Path, silent_api_token: str
) -> None:
    """A SIGKILLed agent runs no stop: its join process, in a session of its own, went on
    with its join against an API that never answers (up to its timeouts, about 15 s), and
    would then have written a membership the agent never read."""
    agent = subprocess.Popen([sys.executable, "-c", JOINING_AGENT, str(tmp_path), silent_api_token])
    try:
        join_process_of(agent)
        time.sleep(1.0)  # past its imports: waiting on the silent API
        agent.kill()
        agent.wait()
        deadline = time.monotonic() + 2
        while joining_processes() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert joining_processes() == []
    finally:
        for pid in joining_processes():
            os.kill(pid, signal.SIGKILL)
