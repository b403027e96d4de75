"""A LAN neighbour's UDP relay: what comes to it on PORT goes on to UPSTREAM (a peer's public
mapping) from a socket of its own, and what comes back goes to whoever sent last. Once the
file DROP exists it passes WireGuard's handshakes on and drops the data (type 4).

lan_proxy.py ADDRESS PORT UPSTREAM_HOST UPSTREAM_PORT DROP
"""

from __future__ import annotations

import os
import select
import socket
import sys


def main() -> None:
    address, port = sys.argv[1], int(sys.argv[2])
    upstream, drop = (sys.argv[3], int(sys.argv[4])), sys.argv[5]
    inner = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    inner.bind((address, port))
    outer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    outer.bind((address, 0))
    victim = None
    print("relaying", flush=True)
    while True:
        ready, _, _ = select.select([inner, outer], [], [])
        for sock in ready:
            data, source = sock.recvfrom(65535)
            if data[:1] == b"\x04" and os.path.exists(drop):
                continue
            if sock is inner:
                victim = source
                outer.sendto(data, upstream)
            elif source == upstream and victim is not None:
                inner.sendto(data, victim)


if __name__ == "__main__":
    main()
