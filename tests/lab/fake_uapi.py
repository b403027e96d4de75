"""A UAPI socket that answers every request with an error (a script): wireguard-go gone odd.

    fake_uapi.py SOCKET_PATH

Answers a `get` with lines that are not UAPI and a `set` with `errno=-5`, until killed.
"""

from __future__ import annotations

import asyncio
import sys


async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    request = await reader.readuntil(b"\n\n")
    writer.write(b"errno=-5\n\n" if request.startswith(b"set") else b"garbage without equals\n\n")
    await writer.drain()
    writer.close()


async def main() -> None:
    server = await asyncio.start_unix_server(answer, sys.argv[1])
    print("listening", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
