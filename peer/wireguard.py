"""WireGuard backends behind one interface: the kernel's (pyroute2 generic netlink,
kernel_wg.py) and userspace (wireguard-go driven through its UAPI socket, userspace_wg.py).
Links, addresses and routes go through rtnetlink for both (links.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from .errors import BackendError
from .uapi import DeviceStatus, PeerConfig, UapiError


class Backend(Protocol):
    name: str

    def check(self) -> None:
        """Raise if this backend cannot work here (a tool missing), before anything is done."""

    async def alive(self) -> bool:
        """False once the device is gone (wireguard-go died): the agent then makes it again."""

    async def create(self, ifname: str, private_key: bytes, listen_port: int) -> None: ...

    async def apply(self, peers: list[PeerConfig], remove: list[bytes]) -> None: ...

    async def status(self) -> DeviceStatus: ...

    async def destroy(self) -> None: ...


@contextlib.contextmanager
def refused_as_backend_error() -> Iterator[None]:
    """UAPI's error (a value refused, a reply not understood, a device's errno) as the backends'
    own: the reconcile loop outlives a BackendError and retries; anything else would end it."""
    try:
        yield
    except UapiError as error:
        raise BackendError(str(error)) from None


def kernel_has_wireguard() -> bool:
    return Path("/sys/module/wireguard").exists()
