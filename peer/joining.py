"""`python -m meshpeer.peer.joining`: the agent's key and its join, in a process of their own.

Both need X25519, HKDF and ChaCha20-Poly1305 (cryptography, through proof.py): about 9 MiB
resident, which a long-running agent would hold for life after a few milliseconds of use (issue
17: the agent's goal is 40 MiB). So `meshpeer run` starts this process (enrolment.py), which
makes or reads the key, derives the public key, joins when given a token, writes what it got to
the state folder as `run` always did, and prints one JSON object saying how it went. It also
reads an API certificate the agent has not seen before, for the TLS pin's check (pinning.py).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ctypes
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from meshpeer.common import proof
from meshpeer.common.errors import InvalidInput
from meshpeer.common.keys import encode_key
from meshpeer.common.pinning import certificate_digest, pin_if_certificate
from meshpeer.common.tokens import JoinToken
from meshpeer.common.tokens import decode as decode_token

from . import client
from .api_decode import pending_routes
from .state import Membership, StateDir, StateError

# The request is a token, a name and at most 64 routes: far below this.
MAX_REQUEST_BYTES = 65536
PR_SET_PDEATHSIG = 1  # prctl(2): the signal this process gets when its parent ends


async def join(
    token: JoinToken,
    private_key: X25519PrivateKey,
    name: str,
    routes: tuple[str, ...],
    time_ms: int,
) -> tuple[Membership, tuple[str, ...]]:
    """Join signed with our key; the credential in the answer is sealed to it. Answers the
    membership and the routes asked for that wait for the operator."""
    try:
        signed = proof.sign_join(
            token.encode(), private_key, token.rendezvous_key, name, routes, time_ms
        )
    except ValueError:  # a low-order point (all zeroes, say): no shared key exists
        raise client.JoinRefused(
            "the token names a rendezvous key that no key exchange works with; make a new token"
        ) from None
    try:
        status, answer = await client._request(
            "POST", f"{token.api_url}/v1/join", token.tls_pin, body=signed.to_json()
        )
    except client.WrongCertificate as error:
        raise client.JoinRefused(str(error)) from None
    if status >= 400:
        raise client.JoinRefused(str(answer.get("error", f"the rendezvous answered {status}")))
    rendezvous = answer.get("rendezvous")
    offered = rendezvous.get("public_key") if isinstance(rendezvous, dict) else None
    if offered != encode_key(token.rendezvous_key):
        raise client.JoinRefused(
            "the rendezvous at the token's URL has another key than the token names; "
            "check the URL or make a new token"
        )
    keys = proof.peer_keys(private_key, token.rendezvous_key)
    try:
        credential = proof.unseal(keys, signed.public_key, answer.get("sealed_credential"))
        membership = Membership.from_join(answer, token, credential)
    except (proof.ProofRejected, KeyError, TypeError, ValueError) as error:
        raise client.Unreachable(f"the rendezvous's join answer is not usable: {error}") from None
    return membership, pending_routes(answer)


def certificate_pin(state: StateDir, der: bytes) -> str:
    """The certificate's pin ("" if it is none); remembered in the state folder when it is
    the membership's, so the agent started again need not ask."""
    pin = pin_if_certificate(der)
    membership = state.membership()
    if pin and membership is not None and membership.tls_pin == pin:
        digests = (*state.certificates(), certificate_digest(der))
        state.save_certificates(tuple(dict.fromkeys(digests)))
    return pin


def own_key(state: StateDir) -> X25519PrivateKey:
    """Ours, made on first use and kept; its public half stored for the agent beside it."""
    raw = state.private_key()
    key = X25519PrivateKey.generate() if raw is None else X25519PrivateKey.from_private_bytes(raw)
    if raw is None:
        state.save_private_key(key.private_bytes_raw())
    state.save_public_key(key.private_bytes_raw(), key.public_key().public_bytes_raw())
    return key


def enrol(request: dict[str, Any]) -> dict[str, Any]:
    """What the agent asked (enrolment.py's request), done; the outcome for it to read."""
    state = StateDir(Path(request["state_dir"]))
    if "certificate" in request:
        return {"pin": certificate_pin(state, base64.b64decode(request["certificate"]))}
    key = own_key(state)
    outcome: dict[str, Any] = {"public_key": encode_key(key.public_key().public_bytes_raw())}
    if request.get("token") is None:
        return outcome
    token = decode_token(request["token"])
    routes = tuple(str(route) for route in request["routes"])
    try:
        membership, pending = asyncio.run(
            join(token, key, str(request["name"]), routes, int(request["time_ms"]))
        )
    except client.JoinRefused as error:
        return {**outcome, "refused": str(error)}
    except client.Unreachable as error:
        return {**outcome, "unreachable": str(error)}
    state.save_membership(membership)
    if token.tls_pin:
        state.save_certificates(client.pinned_certificates(token.tls_pin).remembered())
    return {**outcome, "joined": True, "pending": list(pending)}


def end_with(agent: int) -> None:
    """SIGKILL when the agent (pid `agent`) ends, however it ends. Its stop kills us, but a
    SIGKILLed agent runs no stop, and in a session of our own we went on with the join (up to
    its timeouts, about 15 s) and wrote a membership nobody read. Linux only: elsewhere the
    join's own timeouts end it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != agent:  # it ended before the call: nothing would signal us
        os._exit(1)


def main() -> int:
    # The agent ends this process when it is stopped (it runs in a session of its own, so a
    # terminal's Ctrl-C goes to the agent only); SIGTERM's default ends it at once, and a
    # SIGINT sent to it directly must not print a traceback here.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if len(sys.argv) > 1 and sys.argv[1].isdigit():
        end_with(int(sys.argv[1]))
    try:
        request = json.loads(sys.stdin.buffer.read(MAX_REQUEST_BYTES))
        outcome = enrol(request)
    except (StateError, InvalidInput) as error:
        outcome = {"failed": str(error)}
    except OSError as error:
        outcome = {"failed": f"cannot write the state folder: {error.strerror or error}"}
    except (ValueError, TypeError, KeyError, binascii.Error) as error:  # the agent's: a bug
        outcome = {"failed": f"the join process was asked something it cannot do: {error!r}"}
    sys.stdout.write(json.dumps(outcome) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
