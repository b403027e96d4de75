"""The floor under any relay on this machine: a bare UDP forwarder between two fixed WireGuard
peers, one recvfrom and one sendto a datagram, nothing checked. bench/relay.py runs it on a
lab host of its own and measures the same tunnel through it.

    python bench/forwarder.py END_A END_B PORT
"""

from __future__ import annotations

import socket
import sys

WG_PORT = 51820
BUFFER_BYTES = 4 << 20  # as the rendezvous asks for (rendezvous/udp.py)


def main() -> None:
    one, other, port = (sys.argv[1], WG_PORT), (sys.argv[2], WG_PORT), int(sys.argv[3])
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUFFER_BYTES)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUFFER_BYTES)
    sock.bind(("0.0.0.0", port))  # noqa: S104  # a private lab namespace
    while True:
        data, source = sock.recvfrom(2048)
        sock.sendto(data, other if source == one else one)


if __name__ == "__main__":
    main()
