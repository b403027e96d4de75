"""The agent's DNS-SD reader (peer/dnssd.py) against a real DNS server in the test process
(tests/nameserver.py): wgsd-style records are read, hostile answers are ignored, bounds hold;
and when the agent reads it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from meshpeer.common.keys import encode_key
from meshpeer.dns.naming import instance_name, service_name
from meshpeer.dns.records import PeerEntry, Zone, ZoneConfig
from meshpeer.peer import dnssd
from meshpeer.peer.agent import Agent, Options
from meshpeer.peer.live import Live
from tests.nameserver import Handler, NanoNameserver, zone_handler

ZONE = "mesh.internal"
ORIGIN = dns.name.from_text(ZONE)
KEY_A, KEY_B, STRANGER, LIAR = (bytes([n]) * 32 for n in (1, 2, 66, 7))
Serve = Callable[[Handler], NanoNameserver]


def mesh_zone() -> Zone:
    zone = Zone(ZoneConfig(ORIGIN, 60, "203.0.113.2"))
    for key, name, endpoint in [
        (KEY_A, "a", ("198.51.100.1", 40000)),
        (KEY_B, "b", ("2001:db8::1", 51820)),
        (STRANGER, "s", ("198.51.100.9", 1)),
    ]:
        zone.put(PeerEntry(key, name, "10.77.0.2", ("10.77.0.2/32", "0.0.0.0/0"), endpoint))
    zone.put(PeerEntry(KEY_B.replace(b"\2", b"\3"), "c", "10.77.0.4", (), None))  # unpublished
    return zone


def srv_queries(server: NanoNameserver) -> list[dns.name.Name]:
    return [q.question[0].name for q in server.queries if q.question[0].rdtype == dns.rdatatype.SRV]


def discover(server: NanoNameserver, listed: set[bytes]) -> dict[bytes, list[tuple[str, int]]]:
    return asyncio.run(dnssd.discover(server.endpoint, ZONE, listed))


def test_wgsd_records_give_each_listed_peer_its_endpoint_and_nothing_else(
    nameserver: Serve,
) -> None:
    server = nameserver(zone_handler(mesh_zone()))
    found = discover(server, {KEY_A, KEY_B})
    assert found == {KEY_A: [("198.51.100.1", 40000)], KEY_B: [("2001:db8::1", 51820)]}
    # A key the API does not list costs no query: its instance is never asked about.
    assert instance_name(STRANGER, ORIGIN) not in srv_queries(server)
    assert sorted(srv_queries(server)) == sorted(instance_name(k, ORIGIN) for k in (KEY_A, KEY_B))


def hostile(zone: Zone, garbage_for: dns.name.Name) -> Handler:
    """The zone's answers, except: wire garbage for one instance, a TXT whose pub= names
    another key for KEY_B, a PTR to names that are no instance at all, and an SRV without an
    address record for LIAR."""
    honest = zone_handler(zone)
    liar = instance_name(LIAR, ORIGIN)

    def answer(query: dns.message.Message) -> dns.message.Message | bytes | None:
        question = query.question[0]
        response = honest(query)
        assert isinstance(response, dns.message.Message)
        if question.name == garbage_for:
            return b"\x00\x01garbage"
        if question.rdtype == dns.rdatatype.PTR:
            targets = [str(instance_name(LIAR, ORIGIN)), "not-a-key._wireguard._udp.mesh.internal."]
            extra = dns.rrset.from_text(question.name, 60, "IN", "PTR", *targets)
            for rdata in extra:
                response.answer[0].add(rdata)
        elif question.name == instance_name(KEY_B, ORIGIN):
            forged = f'"txtvers=1" "pub={encode_key(STRANGER)}"'
            txt = dns.rrset.from_text(question.name, 60, "IN", "TXT", forged)
            response.additional = [r for r in response.additional if r.rdtype != txt.rdtype]
            response.additional.append(txt)
        elif question.name == liar:
            response.set_rcode(dns.rcode.NOERROR)
            response.answer = [dns.rrset.from_text(liar, 60, "IN", "SRV", f"0 0 5 {liar}")]
        return response

    return answer


def test_malformed_and_hostile_answers_are_skipped_peer_by_peer(
    nameserver: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dnssd, "DNS_QUERY_TIMEOUT_S", 0.5)  # garbage is retried until then
    zone = mesh_zone()
    server = nameserver(hostile(zone, garbage_for=instance_name(STRANGER, ORIGIN)))
    found = discover(server, {KEY_A, KEY_B, STRANGER, LIAR})
    # STRANGER's answer was garbage, KEY_B's TXT named another key, LIAR had no address.
    assert found == {KEY_A: [("198.51.100.1", 40000)]}
    assert instance_name(LIAR, ORIGIN) in srv_queries(server)


def test_a_garbage_answer_to_the_instance_list_is_a_dns_error_the_agent_logs(
    nameserver: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dnssd, "DNS_QUERY_TIMEOUT_S", 0.5)
    server = nameserver(hostile(mesh_zone(), garbage_for=service_name(ORIGIN)))
    with pytest.raises(dnssd.ZoneUnreadable):  # caught by Agent._poll_dns_sd
        discover(server, {KEY_A})


def test_at_most_max_instances_are_asked_about(
    nameserver: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dnssd, "MAX_INSTANCES", 3)
    zone = Zone(ZoneConfig(ORIGIN, 60, "203.0.113.2"))
    keys = [bytes([n]) * 32 for n in range(10, 18)]
    for n, key in enumerate(keys):
        zone.put(PeerEntry(key, f"p{n}", f"10.77.0.{n + 2}", (), ("198.51.100.1", 1000 + n)))
    server = nameserver(zone_handler(zone))
    found = discover(server, set(keys))
    assert len(srv_queries(server)) == 3 and len(found) == 3


@pytest.mark.parametrize("answering", [False, True])
def test_the_agent_reads_the_zone_only_while_a_path_is_down_and_not_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, answering: bool
) -> None:
    """...and never while the watch answers: it brings the same endpoints sooner."""
    answers = iter([False, True, False, True, False, False])  # Mesh.any_path_down each time
    checks: list[bool] = []
    reads: list[int] = []  # how many checks came before each read

    def any_path_down() -> bool:
        checks.append(next(answers))
        return checks[-1]

    async def scenario() -> tuple[list[bool], list[int]]:
        done = asyncio.Event()

        async def read(agent: Agent, live: Live) -> None:
            reads.append(len(checks))

        def counted_down() -> bool:
            if len(checks) == 5:
                done.set()
            return any_path_down()

        monkeypatch.setattr(Agent, "_read_dns_sd", read)
        mesh = SimpleNamespace(any_path_down=counted_down)
        watch = SimpleNamespace(answering=answering)
        live = cast(Live, SimpleNamespace(mesh=mesh, rendezvous=watch))
        poll = asyncio.create_task(Agent(Options(tmp_path, dns_sd_poll_s=0.01))._poll_dns_sd(live))
        await asyncio.sleep(0)  # the loop's first step: nothing read, nothing checked
        at_start = (list(checks), list(reads))
        await asyncio.wait_for(done.wait(), 10)
        poll.cancel()
        return at_start

    assert asyncio.run(scenario()) == ([], [])
    assert reads == ([] if answering else [2, 4])
