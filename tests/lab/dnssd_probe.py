"""Runs the agent's DNS-SD discovery against a server and prints what it found (a script).

dnssd_probe.py SERVER PORT ZONE
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys

from meshpeer.peer.dnssd import discover


async def main() -> None:
    server, port, zone = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    peers = await discover((server, port), zone)
    found = [
        {
            "public_key": base64.b64encode(peer.public_key).decode(),
            "name": peer.name,
            "address": peer.address,
            "routes": list(peer.routes),
            "endpoint": list(peer.endpoint) if peer.endpoint else None,
        }
        for peer in peers
    ]
    print(json.dumps(found))


if __name__ == "__main__":
    asyncio.run(main())
