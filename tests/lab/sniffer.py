"""Records UDP payloads sent to a port, off the wire, as an on-path attacker would (a script).

    sniffer.py PORT

Runs on a lab host with an AF_PACKET socket, which sees packets before the firewall does; prints
one JSON line per datagram: {"source": [ip, port], "payload": hex}.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import struct
import sys

ETH_P_IP = 0x0800
UDP = 17


def main() -> None:
    port = int(sys.argv[1])
    sniffer = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
    print(json.dumps({"ready": True}), flush=True)
    while True:
        packet, (_, _, packet_type, *_) = sniffer.recvfrom(65535)
        if packet_type == socket.PACKET_OUTGOING or len(packet) < 28 or packet[9] != UDP:
            continue
        header_length = (packet[0] & 0x0F) * 4
        source_port, destination_port = struct.unpack_from("!HH", packet, header_length)
        if destination_port != port:
            continue
        source = str(ipaddress.IPv4Address(packet[12:16]))
        payload = packet[header_length + 8 :]
        print(json.dumps({"source": [source, source_port], "payload": payload.hex()}), flush=True)


if __name__ == "__main__":
    main()
