"""Test-side handles on the UDP helpers running inside lab hosts (see udp_agent.py)."""

from __future__ import annotations

from .process import LineAgent

Address = tuple[str, int]
READY_TIMEOUT_S = 10.0


class UdpSocket:
    """One UDP socket bound inside a host; it keeps its NAT mapping for the whole scenario."""

    def __init__(self, agent: LineAgent) -> None:
        self.agent = agent
        bound = agent.read(READY_TIMEOUT_S)["ready"]
        self.port: int = bound[1]

    def send(self, to: Address, data: str) -> None:
        self.agent.request(op="send", to=list(to), data=data)

    def send_bytes(self, to: Address, data: bytes) -> None:
        self.agent.request(op="send", to=list(to), hex=data.hex())

    def recv_bytes(self, timeout: float = 1.0) -> tuple[bytes, Address] | None:
        answer = self.agent.request(timeout=timeout + 5, op="recv", timeout_s=timeout)
        if answer.get("timeout"):
            return None
        return bytes.fromhex(answer["hex"]), (answer["from"][0], answer["from"][1])

    def recv(self, timeout: float = 1.0) -> tuple[str, Address] | None:
        received = self.recv_bytes(timeout)
        return None if received is None else (received[0].decode(errors="replace"), received[1])

    def ask(self, reflector: Address, timeout: float = 2.0) -> Address | None:
        """The address a reflector saw this socket's datagram come from: its public mapping."""
        answer = self.agent.request(
            timeout=timeout + 5, op="ask", to=list(reflector), timeout_s=timeout
        )
        if answer.get("timeout"):
            return None
        return answer["mapped"][0], answer["mapped"][1]


class Reflector:
    """A reflector on a host: answers each datagram with the source address it saw."""

    def __init__(self, agent: LineAgent, address: Address) -> None:
        agent.read(READY_TIMEOUT_S)
        self.address = address
