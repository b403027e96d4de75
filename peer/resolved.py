"""Names on the host: with systemd-resolved, queries under the mesh's zone go to its DNS.

`resolvectl dns wg0 SERVER` and `resolvectl domain wg0 ~ZONE` make the zone a routing domain
of the interface, so `ping laptop.mesh.internal` works and nothing else is sent there. The
settings go with the interface. Without systemd-resolved, README says what to add instead.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path

from .timers import RESOLVECTL_TIMEOUT_S

logger = logging.getLogger("meshpeer.peer.resolved")

RESOLVED_RUNTIME = Path("/run/systemd/resolve")  # there while systemd-resolved runs


def available() -> bool:
    return shutil.which("resolvectl") is not None and RESOLVED_RUNTIME.is_dir()


async def point_zone(interface: str, server: str, zone: str) -> None:
    """Send `zone` queries to `server` (HOST:PORT) through `interface`; a warning if it fails."""
    routing_domain = "~" + zone.rstrip(".")
    for argv in (["dns", interface, server], ["domain", interface, routing_domain]):
        if not await _resolvectl(argv):
            return
    logger.info("names under %s now resolve through %s (systemd-resolved)", zone, server)


async def _resolvectl(argv: list[str]) -> bool:
    resolvectl = shutil.which("resolvectl") or "resolvectl"
    try:
        process = await asyncio.create_subprocess_exec(
            resolvectl, *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        _, errors = await asyncio.wait_for(process.communicate(), RESOLVECTL_TIMEOUT_S)
    except (OSError, TimeoutError) as error:
        logger.warning(
            "resolvectl %s failed (%s): names under the zone stay unresolved", argv[0], error
        )
        return False
    if process.returncode != 0:
        detail = errors.decode(errors="replace").strip().splitlines()
        logger.warning("resolvectl %s failed: %s", argv[0], detail[-1] if detail else "no output")
        return False
    return True
