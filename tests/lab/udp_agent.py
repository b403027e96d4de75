"""A UDP socket that lives inside a lab host, driven by JSON lines (run as a script).

``udp_agent.py PORT reflect`` answers every datagram with ``{"seen": [ip, port]}``: the source
address as this host saw it, after every NAT on the way (a STUN server's binding response,
RFC 5389, in its simplest form).

``udp_agent.py PORT`` keeps one socket bound to PORT and obeys commands on stdin, one JSON
object a line, answering one JSON line each:
  {"op": "send", "to": [ip, port], "data": "..."}  (or "hex": "..." for raw bytes)
  {"op": "recv", "timeout_s": s}  -> {"from": [ip, port], "data": "...", "hex": "..."}
                                     or {"timeout": true}
  {"op": "ask", "to": [ip, port], "timeout_s": s}  -> {"mapped": [ip, port]} or {"timeout": true}
Keeping one socket for the whole scenario is the point: a NAT mapping belongs to that socket.
"""

from __future__ import annotations

import collections
import json
import socket
import sys
import time
from typing import Any

Datagram = tuple[bytes, tuple[str, int]]


def reflect(sock: socket.socket) -> None:
    while True:
        _, source = sock.recvfrom(2048)
        sock.sendto(json.dumps({"seen": list(source)}).encode(), source)


class Agent:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.pending: collections.deque[Datagram] = collections.deque()

    def receive(self, timeout: float) -> Datagram | None:
        if self.pending:
            return self.pending.popleft()
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data, source = self.sock.recvfrom(2048)
        except TimeoutError:
            return None
        return data, (source[0], source[1])

    def ask(self, to: tuple[str, int], timeout: float) -> dict[str, Any]:
        """Ask a reflector which address it sees; other datagrams are kept for later recv."""
        deadline = time.monotonic() + timeout
        held: list[Datagram] = []
        self.sock.sendto(b"whoami", to)
        try:
            while (left := deadline - time.monotonic()) > 0:
                self.sock.settimeout(left)
                try:
                    data, source = self.sock.recvfrom(2048)
                except TimeoutError:
                    break
                if (source[0], source[1]) == to:
                    return {"mapped": json.loads(data)["seen"]}
                held.append((data, (source[0], source[1])))
            return {"timeout": True}
        finally:
            self.pending.extend(held)

    def obey(self, command: dict[str, Any]) -> dict[str, Any]:
        op = command["op"]
        if op == "send":
            data = bytes.fromhex(command["hex"]) if "hex" in command else command["data"].encode()
            self.sock.sendto(data, tuple(command["to"]))
            return {"sent": True}
        if op == "recv":
            datagram = self.receive(command["timeout_s"])
            if datagram is None:
                return {"timeout": True}
            data, source = datagram
            return {"from": list(source), "data": data.decode(errors="replace"), "hex": data.hex()}
        if op == "ask":
            return self.ask(tuple(command["to"]), command["timeout_s"])
        return {"error": f"unknown op {op!r}"}


def main() -> None:
    port = int(sys.argv[1])
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", port))  # noqa: S104 - a lab host listens on all its addresses
    print(json.dumps({"ready": list(sock.getsockname())}), flush=True)
    if sys.argv[2:] == ["reflect"]:
        reflect(sock)
        return
    agent = Agent(sock)
    for line in sys.stdin:
        print(json.dumps(agent.obey(json.loads(line))), flush=True)


if __name__ == "__main__":
    main()
