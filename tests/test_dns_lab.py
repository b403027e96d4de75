"""Debian's dig against the DNS-SD server: in the lab behind a NAT, and on loopback at scale."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import dns.name
import pytest

from meshpeer.dns.records import PeerEntry, Zone, ZoneConfig
from meshpeer.dns.server import Authority
from meshpeer.rendezvous.dnsserve import DnsServer
from tests.lab import Lab, NatType
from tests.lab.rendezvous import RendezvousServer
from tests.lab.topology import Host
from tests.lab.wait import wait_until
from tests.lab.wireguard import WireGuardGo

ZONE = "mesh.internal"
SERVICE = f"_wireguard._udp.{ZONE}"


def dig(host: Host, server: str, *query: str) -> str:
    return host.run(["dig", f"@{server}", "+time=2", "+tries=1", *query]).stdout


def status(output: str) -> str:
    found = re.search(r"status: (\w+)", output)
    assert found, output
    return found.group(1)


def section(output: str, name: str) -> list[list[str]]:
    """The records of one section of dig's output, each split into fields."""
    match = re.search(rf";; {name} SECTION:\n(.*?)(?:\n\n|\Z)", output, re.S)
    return [line.split() for line in match.group(1).splitlines()] if match else []


@pytest.mark.lab
def test_dig_shows_a_peer_behind_a_nat_at_its_mapping(lab: Lab) -> None:
    server = RendezvousServer(lab.add_public_host("rendezvous")).start()
    observer = lab.add_public_host("observer")
    nat = lab.add_nat("home", NatType.PORT_RESTRICTED)
    wg = WireGuardGo(nat.add_host("laptop"), "10.77.0.2/16").start()
    server.cli("peer", "add", "--public-key", wg.public_key, "--name", "laptop")
    wg.add_peer(server.public_key(), "10.77.0.1/32", server.endpoint, 2)
    address = str(server.host.address)

    assert wait_until(lambda: dig(observer, address, "+short", SERVICE, "PTR").strip(), 3)
    [instance] = dig(observer, address, "+short", SERVICE, "PTR").split()
    label = instance.split(".")[0]
    srv = dig(observer, address, instance, "SRV")
    assert "flags: qr aa" in srv, srv
    [[_, _, _, _, priority, weight, port, target]] = section(srv, "ANSWER")
    observed = server.peers()["laptop"]["endpoint"]
    assert (priority, weight, target) == ("0", "0", instance)
    assert observed == f"{nat.public_address}:{port}"
    additional = {fields[3]: fields[4:] for fields in section(srv, "ADDITIONAL")}
    assert additional["A"] == [str(nat.public_address)]
    assert f'"pub={wg.public_key}"' in additional["TXT"]
    assert '"txtvers=1"' in additional["TXT"] and '"allowed=10.77.0.2/32"' in additional["TXT"]
    decoded = observer.run(
        ["sh", "-c", f"echo {label} | tr '[:lower:]' '[:upper:]' | base32 -d | base64"]
    ).stdout.strip()
    assert decoded == wg.public_key

    assert section(dig(observer, address, f"laptop.{ZONE}", "A"), "ANSWER")[0][4] == "10.77.0.2"
    nxdomain = dig(observer, address, f"nobody.{ZONE}", "A")
    assert status(nxdomain) == "NXDOMAIN" and section(nxdomain, "AUTHORITY")[0][3] == "SOA"
    nodata = dig(observer, address, f"laptop.{ZONE}", "MX")
    assert status(nodata) == "NOERROR" and not section(nodata, "ANSWER")
    assert section(nodata, "AUTHORITY")[0][3] == "SOA"
    assert status(dig(observer, address, "example.com", "A")) == "REFUSED"
    apex = section(dig(observer, address, ZONE, "SOA"), "ANSWER")
    assert apex[0][3] == "SOA" and apex[0][4] == f"ns.{ZONE}."
    services = dig(observer, address, "+short", f"_services._dns-sd._udp.{ZONE}", "PTR")
    assert services.split() == [f"{SERVICE}."]


class ThreadedDnsServer:
    """The DNS server on its own event loop thread, on loopback, for dig to ask."""

    def __init__(self, zone: Zone) -> None:
        self.server = DnsServer(Authority(zone, axfr_allow=(ipaddress.ip_network("127.0.0.0/8"),)))
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]

    def __enter__(self) -> ThreadedDnsServer:
        self.thread.start()
        start = self.server.start("127.0.0.1", self.port)
        asyncio.run_coroutine_threadsafe(start, self.loop).result(10)
        return self

    def __exit__(self, *_: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def dig(self, *query: str) -> str:
        argv = ["dig", "@127.0.0.1", "-p", str(self.port), "+time=5", "+tries=1", *query]
        return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True).stdout


def zone_with(peers: int) -> Zone:
    zone = Zone(ZoneConfig(dns.name.from_text(ZONE), 0, "127.0.0.1"))
    for index in range(peers):
        address = f"10.77.{index // 250}.{index % 250 + 2}"
        endpoint = (f"198.51.100.{index % 250 + 1}", 20000 + index)
        zone.put(PeerEntry(os.urandom(32), f"p{index}", address, (f"{address}/32",), endpoint))
    return zone


@pytest.fixture
def big_zone() -> Iterator[ThreadedDnsServer]:
    with ThreadedDnsServer(zone_with(3000)) as server:
        yield server


def header_flags(output: str) -> set[str]:
    found = re.search(r";; flags: ([a-z ]+);", output)
    assert found, output
    return set(found.group(1).split())


def answer_count(output: str) -> int:
    found = re.search(r"ANSWER: (\d+)", output)
    assert found, output
    return int(found.group(1))


def test_dig_sees_3000_peers_truncated_over_udp_and_every_one_by_axfr(
    big_zone: ThreadedDnsServer,
) -> None:
    over_udp = big_zone.dig("+ignore", SERVICE, "PTR")
    assert "tc" in header_flags(over_udp) and answer_count(over_udp) == 0
    over_tcp = big_zone.dig("+tcp", SERVICE, "PTR")
    # One DNS message holds at most 64 KiB, about 920 of these PTRs: TCP carries as many as
    # fit and says it is incomplete; a zone transfer carries them all.
    assert "tc" in header_flags(over_tcp) and 900 < answer_count(over_tcp) < 3000
    transfer = big_zone.dig("+tcp", ZONE, "AXFR")
    instances = re.findall(rf"^{re.escape(SERVICE)}\.\s+0\s+IN\s+PTR\s+(\S+)", transfer, re.M)
    assert len(set(instances)) == 3000


def test_dig_gets_900_peers_complete_over_tcp() -> None:
    with ThreadedDnsServer(zone_with(900)) as server:
        over_udp = server.dig("+ignore", "+bufsize=4096", SERVICE, "PTR")
        assert "tc" in header_flags(over_udp)
        over_tcp = server.dig("+tcp", SERVICE, "PTR")
        assert "tc" not in header_flags(over_tcp) and answer_count(over_tcp) == 900
        label = server.dig("+short", SERVICE, "PTR", "+tcp").split()[0].split(".")[0]
        decoded = subprocess.run(
            ["sh", "-c", f"echo {label} | tr '[:lower:]' '[:upper:]' | base32 -d | base64"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert len(base64.b64decode(decoded)) == 32


@pytest.mark.lab
def test_the_agents_dns_sd_discovery_reads_the_rendezvous_zone(lab: Lab) -> None:
    server = RendezvousServer(lab.add_public_host("rendezvous")).start()
    observer = lab.add_public_host("observer")
    nat = lab.add_nat("home", NatType.PORT_RESTRICTED)
    wg = WireGuardGo(nat.add_host("router"), "10.77.0.2/16").start()
    server.cli(
        "peer",
        "add",
        "--public-key",
        wg.public_key,
        "--name",
        "router",
        "--routes",
        "192.168.50.0/24",
    )
    silent = WireGuardGo(observer, "10.9.0.1/24").public_key
    server.cli("peer", "add", "--public-key", silent, "--name", "silent")
    # registered, never handshakes: not in DNS-SD
    wg.add_peer(server.public_key(), "10.77.0.1/32", server.endpoint, 2)
    assert wait_until(lambda: server.peers()["router"]["endpoint"], 3)

    probe = [sys.executable, str(Path(__file__).with_name("lab") / "dnssd_probe.py")]
    where = [str(server.host.address), "53", ZONE]
    found = json.loads(observer.run([*probe, *where, wg.public_key, silent]).stdout)
    host, port = server.peers()["router"]["endpoint"].rsplit(":", 1)
    # The endpoint only: names, addresses and routes come from the API (DESIGN.md, Trust model)
    assert found == [{"public_key": wg.public_key, "endpoints": [[host, int(port)]]}]
    assert json.loads(observer.run([*probe, *where, silent]).stdout) == []  # not listed
