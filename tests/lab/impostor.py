"""A host answering in the rendezvous's place: TLS with its own certificate (a script).

    impostor.py HOST PORT

Accepts TLS connections as any MITM would (it holds the key of the certificate it shows) and
prints one JSON line per connection with every byte the client sent after the handshake, hex.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import sys
import tempfile
from pathlib import Path

from meshpeer.rendezvous.tls import ensure_self_signed, server_context

READ_WINDOW_S = 3.0


async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    received = b""
    try:
        while len(received) < 65536:
            chunk = await asyncio.wait_for(reader.read(4096), READ_WINDOW_S)
            if not chunk:
                break
            received += chunk
    except (TimeoutError, ConnectionError, ssl.SSLError):
        pass
    print(json.dumps({"received": received.hex()}), flush=True)
    writer.close()


async def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    with tempfile.TemporaryDirectory() as folder:
        context = server_context(ensure_self_signed(Path(folder), host))
        server = await asyncio.start_server(record, host, port, ssl=context)
        print(json.dumps({"listening": port}), flush=True)
        async with server:
            await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
