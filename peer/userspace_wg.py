"""The userspace WireGuard backend: wireguard-go, started as a child process and driven through
its UAPI socket (the codec is uapi.py; this is only the process and the socket).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from pathlib import Path

from . import timers
from .errors import BackendError, MissingTool
from .uapi import (
    DeviceStatus,
    PeerConfig,
    UapiError,
    check_errno,
    get_request,
    parse_get,
    set_device,
    set_peers,
)
from .wireguard import refused_as_backend_error

UAPI_DIR = Path("/run/wireguard")
USERSPACE_ENV = {"WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1"}


class UserspaceBackend:
    name = "userspace"

    def __init__(self, uapi_dir: Path = UAPI_DIR, binary: str = "wireguard-go") -> None:
        self.uapi_dir = uapi_dir
        self.binary = binary
        self.ifname = ""
        self.process: asyncio.subprocess.Process | None = None

    @property
    def socket_path(self) -> Path:
        return self.uapi_dir / f"{self.ifname}.sock"

    def check(self) -> None:
        if shutil.which(self.binary) is None:
            raise MissingTool(
                "wireguard-go is not installed: `apt-get install wireguard-go`, "
                "or use --backend kernel on a kernel with WireGuard"
            )

    async def create(self, ifname: str, private_key: bytes, listen_port: int) -> None:
        self.ifname = ifname
        self.check()
        # A socket left by a wireguard-go that died would look ready before the new one is.
        # (The interface is known not to exist here, so no live wireguard-go owns it.)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        process = await asyncio.create_subprocess_exec(
            self.binary,
            "--foreground",
            ifname,
            env={**os.environ, **USERSPACE_ENV},
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        self.process = process
        await self._wait_for_socket(process)
        with refused_as_backend_error():
            check_errno(await self._exchange(set_device(private_key, listen_port)))

    async def _wait_for_socket(self, process: asyncio.subprocess.Process) -> None:
        """Until wireguard-go accepts on its socket: the file can be there a moment before it
        listens (a start once failed with ECONNREFUSED), so connect, not only look."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timers.USERSPACE_SOCKET_WAIT_S
        while not await self._accepts():
            if process.returncode is not None or loop.time() > deadline:
                await _fail_start(process)
            await asyncio.sleep(timers.USERSPACE_SOCKET_POLL_S)

    async def _accepts(self) -> bool:
        try:
            _, writer = await asyncio.open_unix_connection(str(self.socket_path))
        except OSError:
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    async def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def apply(self, peers: list[PeerConfig], remove: list[bytes]) -> None:
        if peers or remove:
            with refused_as_backend_error():
                check_errno(await self._exchange(set_peers(peers, remove)))

    async def status(self) -> DeviceStatus:
        with refused_as_backend_error():
            return parse_get(await self._exchange(get_request()))

    async def _exchange(self, request: bytes) -> bytes:
        try:
            reader, writer = await asyncio.open_unix_connection(str(self.socket_path))
        except OSError as error:
            raise BackendError(
                f"cannot reach wireguard-go at {self.socket_path}: {error}"
            ) from None
        try:
            writer.write(request)
            await writer.drain()
            return await reader.readuntil(b"\n\n")
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as error:
            raise UapiError(f"wireguard-go closed the UAPI socket: {error!r}") from None
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def destroy(self) -> None:
        """Stopping wireguard-go removes its TUN device and socket."""
        process, self.process = self.process, None
        if process is None or process.returncode is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), timers.USERSPACE_TERMINATE_S)
        except TimeoutError:
            process.kill()
            await process.wait()


async def _fail_start(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.terminate()
    _, errors = await process.communicate()
    detail = errors.decode(errors="replace").strip().splitlines()
    raise BackendError(f"wireguard-go did not start: {detail[-1] if detail else 'no output'}")
