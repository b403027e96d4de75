"""Many joins at once against the HTTP API, printing each acknowledged one (a script).

    join_burst.py API_URL TOKEN COUNT CONCURRENCY

Prints {"acked": name, "address": ip} as soon as the rendezvous answers 200 or 201, and
{"failed": name, "error": text} otherwise; the output is the list of promises to check.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import aiohttp
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from meshpeer.common import proof, tokens
from meshpeer.common.aiohttp_pinning import client_ssl
from meshpeer.common.keys import encode_key


async def join(session: aiohttp.ClientSession, url: str, token: str, name: str) -> None:
    """One join as the agent makes it: signed with a new key, over the pinned TLS."""
    decoded = tokens.decode(token)
    private_key = X25519PrivateKey.generate()
    key = encode_key(private_key.public_key().public_bytes_raw())
    time_ms = int(time.time() * 1000)
    signed = proof.sign_join(token, private_key, decoded.rendezvous_key, name, (), time_ms)
    ssl = client_ssl(decoded.tls_pin)
    try:
        async with session.post(f"{url}/v1/join", json=signed.to_json(), ssl=ssl) as answer:
            payload = await answer.json()
            if answer.status in (200, 201):
                line = {"acked": name, "address": payload["peer"]["address"], "key": key}
            else:
                line = {"failed": name, "error": payload.get("error", answer.status)}
    except (TimeoutError, aiohttp.ClientError, OSError) as error:
        line = {"failed": name, "error": repr(error)}
    print(json.dumps(line), flush=True)


async def main() -> None:
    url, token, count, concurrency = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    limit = asyncio.Semaphore(concurrency)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def limited(index: int) -> None:
            async with limit:
                await join(session, url, token, f"burst-{index}")

        await asyncio.gather(*(limited(index) for index in range(count)))
    print(json.dumps({"done": True}), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
