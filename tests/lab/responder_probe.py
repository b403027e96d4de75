"""Runs the rendezvous handshake responder on a lab host and prints its events (a script).

    responder_probe.py HOST PORT PRIVATE_KEY_B64 [AUTHORIZED_KEY_B64 ...]

Prints {"ready": true}, then one JSON line per event, and {"drops": {...}} every second.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from meshpeer.rendezvous.handshake import EndpointConfirmed, Event, Responder
from meshpeer.rendezvous.wgport import serve_handshakes


def report(event: Event) -> None:
    kind = "confirmed" if isinstance(event, EndpointConfirmed) else "accepted"
    key = base64.b64encode(event.public_key).decode()
    print(json.dumps({kind: key, "source": list(event.source)}), flush=True)


async def main() -> None:
    host, port, private_b64, *authorized = sys.argv[1:]
    private_key = X25519PrivateKey.from_private_bytes(base64.b64decode(private_b64))
    responder = Responder(private_key)
    for key in authorized:
        responder.authorize(base64.b64decode(key))
    await serve_handshakes(responder, host, int(port), report)
    print(json.dumps({"ready": True}), flush=True)
    while True:
        await asyncio.sleep(1)
        print(json.dumps({"drops": dict(responder.drops)}), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
