"""A hostile DNS server for the lab: answers the mesh's DNS-SD names with whatever records a
test gives it, newlines and all (a script, run on a lab host).

hostile_dns.py LISTEN_ADDRESS SPEC_JSON

SPEC_JSON: {"zone": "mesh.internal", "instances": [{"public_key": BASE64, "address": IP,
"port": N, "txt": ["pub=...", "allowed=0.0.0.0/0", ...]}, ...]}. UDP and TCP on port 53, as
the rendezvous serves them; every query is printed as `query NAME TYPE`, so a test can tell
when the agent asked and what it was told.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from pathlib import Path
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.rrset

from meshpeer.dns.naming import instance_name, service_name

IN = dns.rdataclass.IN
TTL = 0
PORT = 53


class HostileZone:
    def __init__(self, spec: dict[str, Any]) -> None:
        zone = dns.name.from_text(spec["zone"])
        self.service = service_name(zone)
        self.instances = {
            instance_name(base64.b64decode(item["public_key"]), zone): item
            for item in spec["instances"]
        }

    def answer(self, wire: bytes) -> bytes | None:
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        [question] = query.question
        print(f"query {question.name} {dns.rdatatype.to_text(question.rdtype)}", flush=True)
        if question.name == self.service and question.rdtype == dns.rdatatype.PTR:
            ptr = dns.rdatatype.PTR
            targets = [dns.rdata.from_text(IN, ptr, name.to_text()) for name in self.instances]
            response.answer.append(dns.rrset.from_rdata_list(question.name, TTL, targets))
        elif question.name in self.instances and question.rdtype == dns.rdatatype.SRV:
            self._instance(response, question.name, self.instances[question.name])
        return response.to_wire()

    def _instance(self, response: dns.message.Message, name: dns.name.Name, item: Any) -> None:
        srv = dns.rdata.from_text(IN, dns.rdatatype.SRV, f"0 0 {item['port']} {name}")
        address = dns.rdata.from_text(IN, dns.rdatatype.A, item["address"])
        strings = [text.encode() for text in item["txt"]]
        txt = dns.rdtypes.ANY.TXT.TXT(IN, dns.rdatatype.TXT, strings)
        response.answer.append(dns.rrset.from_rdata(name, TTL, srv))
        response.additional.append(dns.rrset.from_rdata(name, TTL, address))
        response.additional.append(dns.rrset.from_rdata(name, TTL, txt))


class Udp(asyncio.DatagramProtocol):
    def __init__(self, zone: HostileZone) -> None:
        self.zone = zone
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram endpoint's own

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        answer = self.zone.answer(data)
        if answer is not None and self.transport is not None:
            self.transport.sendto(answer, addr)


async def serve_tcp(
    zone: HostileZone, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        while True:
            size = int.from_bytes(await reader.readexactly(2), "big")
            answer = zone.answer(await reader.readexactly(size))
            if answer is None:
                break
            writer.write(len(answer).to_bytes(2, "big") + answer)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main(address: str, zone: HostileZone) -> None:
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(lambda: Udp(zone), local_addr=(address, PORT))
    server = await asyncio.start_server(
        lambda r, w: serve_tcp(zone, r, w), address, PORT, reuse_address=True
    )
    print(f"serving {len(zone.instances)} instances on {address}:{PORT}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], HostileZone(json.loads(Path(sys.argv[2]).read_text()))))
