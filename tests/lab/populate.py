"""Registers COUNT peers by hand in a data folder, in one transaction (a script).

    populate.py DATA_DIR COUNT PUBLIC_ENDPOINT

For tests that need a large zone (an AXFR that takes a while to send) before `serve` starts.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from meshpeer.rendezvous.registry import Registry
from meshpeer.rendezvous.settings import Overrides


async def main() -> None:
    data_dir, count, endpoint = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    registry = await Registry.open(data_dir, Overrides(public_endpoint=endpoint))
    try:
        keys = [X25519PrivateKey.generate().public_key().public_bytes_raw() for _ in range(count)]
        await registry.add_peers([(key, f"bulk{n}") for n, key in enumerate(keys)])
    finally:
        await registry.close()
    print(count)


if __name__ == "__main__":
    asyncio.run(main())
