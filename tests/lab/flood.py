"""A bounded flood of handshake initiations that pass the mac1 check (a script).

    flood.py HOST PORT RESPONDER_PUBLIC_KEY_B64 COUNT RATE

Anyone who knows the rendezvous public key can compute mac1, so this is the flood the cookie
mechanism exists for: every datagram costs the responder work unless it asks for cookies.
Sends COUNT datagrams at RATE a second from one socket, then prints {"sent": COUNT}.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import sys
import time

from meshpeer.rendezvous import noise, wire


def main() -> None:
    host, port, key_b64, count, rate = sys.argv[1:]
    mac1_key = noise.blake2s(noise.LABEL_MAC1, base64.b64decode(key_b64))
    flood = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    flood.setblocking(False)
    interval = 1.0 / float(rate)
    start = time.monotonic()
    print(json.dumps({"started": True}), flush=True)
    for sent in range(int(count)):
        body = (1).to_bytes(4, "little") + os.urandom(wire.INITIATION_MAC1_END - 4)
        datagram = body + noise.mac(mac1_key, body) + bytes(16)
        try:
            flood.sendto(datagram, (host, int(port)))
        except BlockingIOError:
            pass  # a full socket buffer drops it, as a real flood's would
        delay = start + (sent + 1) * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    print(json.dumps({"sent": int(count)}), flush=True)


if __name__ == "__main__":
    main()
