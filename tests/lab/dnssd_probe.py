"""Runs the agent's DNS-SD discovery against a server and prints what it found (a script).

dnssd_probe.py SERVER PORT ZONE KEY...   (the keys the API would list, base64)
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys

from meshpeer.peer.dnssd import discover


async def main() -> None:
    server, port, zone = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    listed = {base64.b64decode(key) for key in sys.argv[4:]}
    hints = await discover((server, port), zone, listed)
    found = [
        {"public_key": base64.b64encode(key).decode(), "endpoints": [list(e) for e in endpoints]}
        for key, endpoints in hints.items()
    ]
    print(json.dumps(found))


if __name__ == "__main__":
    asyncio.run(main())
