"""The rendezvous instances an agent knows (peer/instances.py): the list from the API is
hostile input, bounded and checked field by field; and the failover order every agent takes."""

from __future__ import annotations

import asyncio
import ipaddress
import json
from dataclasses import replace
from pathlib import Path

import pytest

from meshpeer.peer import client
from meshpeer.peer.api_decode import watch_answer
from meshpeer.peer.instances import (
    MAX_INSTANCES,
    Failover,
    Instance,
    literal_addresses,
    parse_instances,
)
from meshpeer.peer.state import Membership, StateDir, StateError
from meshpeer.peer.timers import FAILBACK_AFTER_S, FAILOVER_AFTER_S
from meshpeer.peer.watching import dns_server, outside_mesh

FIRST = Instance("https://203.0.113.2:51821", "203.0.113.2:51820", "203.0.113.2:53")
SECOND = Instance("https://203.0.113.3:51821", "203.0.113.3:51820", "203.0.113.3:53")
THIRD = Instance("https://rv3.example.net", "rv3.example.net:51820", "rv3.example.net:53")


def listed(*instances: Instance) -> list[dict[str, str]]:
    return [instance.to_json() for instance in instances]


def test_a_well_formed_list_is_kept_in_order() -> None:
    assert parse_instances(listed(SECOND, FIRST, THIRD)) == (SECOND, FIRST, THIRD)


@pytest.mark.parametrize(
    "field, value",
    [
        ("api_url", "http://203.0.113.9:51821"),  # not TLS: the pin would protect nothing
        ("api_url", "https://user:pw@203.0.113.9"),
        ("api_url", "https://203.0.113.9:99999"),
        ("api_url", "https://203.0.113.9/?x=1"),
        ("api_url", "https://bad host/"),
        ("api_url", "https://203.0.113.9/\r\nX-Evil: 1"),
        ("api_url", "https://" + "a" * 3000),
        ("api_url", 7),
        ("api_url", "https://:@203.0.113.9"),  # empty credentials: aiohttp raised on every request
        ("api_url", "https://203.0.113.9/p?"),  # an empty query: the API's went after it
        ("api_url", "https://203.0.113.9/p#"),
        ("api_url", "https://203.0.113.9:0"),
        ("api_url", "https://203.0.113.9:"),
        ("api_url", "https://203.0.113.9/a\x7fb"),
        ("endpoint", "203.0.113.9"),  # no port
        ("endpoint", "203.0.113.9:0"),
        ("endpoint", "bad_host!:51820"),
        ("endpoint", "fe80::1%eth0\nremove=true:51820"),
        ("dns", ["203.0.113.9:53"]),
        ("dns", "x" * 300 + ":53"),
    ],
)
def test_an_instance_with_a_bad_field_is_skipped(field: str, value: object) -> None:
    bad = FIRST.to_json() | {field: value}
    assert parse_instances([bad, SECOND.to_json()]) == (SECOND,)


@pytest.mark.parametrize("raw", [None, "list", {"api_url": FIRST.api_url}, [1, "x", None]])
def test_anything_but_a_list_of_objects_gives_nothing(raw: object) -> None:
    assert parse_instances(raw) == ()


def test_a_long_list_is_cut_and_duplicates_dropped() -> None:
    many = [
        Instance(f"https://203.0.113.{n}:51821", f"203.0.113.{n}:51820", f"203.0.113.{n}:53")
        for n in range(1, 40)
    ]
    raw = listed(FIRST, FIRST, *many)
    assert len(parse_instances(raw)) <= MAX_INSTANCES
    assert parse_instances(raw).count(FIRST) == 1


def test_a_watch_answer_carries_the_list_only_when_it_names_one() -> None:
    base = {"epoch": "e", "revision": 3, "full": False, "peers": [], "removed": []}
    assert watch_answer(base).instances is None
    assert watch_answer(base | {"instances": listed(FIRST, SECOND)}).instances == (FIRST, SECOND)


def test_failover_waits_for_silence_then_moves_to_the_next_by_url() -> None:
    failover = Failover(FIRST)
    failover.heard((FIRST, THIRD, SECOND), 0.0)  # the one answering lists itself first
    assert failover.failed(100.0) is None
    assert failover.failed(100.0 + FAILOVER_AFTER_S - 0.1) is None
    assert failover.failed(100.0 + FAILOVER_AFTER_S) == SECOND  # sorted by URL: .2, .3, rv3
    failover.moved(SECOND, 100.0 + FAILOVER_AFTER_S)
    assert failover.current == SECOND
    assert failover.failed(200.0) is None  # a fresh wait for the new one
    assert failover.failed(200.0 + FAILOVER_AFTER_S) == THIRD
    failover.moved(THIRD, 200.0 + FAILOVER_AFTER_S)
    assert failover.failed(300.0) is None
    assert failover.failed(300.0 + FAILOVER_AFTER_S) == FIRST  # and round again


def test_every_agent_goes_back_to_the_first_instance_once_it_is_listed_live_long_enough() -> None:
    """A relayed pair needs both sides at one instance: an agent that joined through the second
    (or left the first while it was down) goes back to the first by URL."""
    failover = Failover(SECOND)
    failover.heard((SECOND, FIRST), 100.0)
    assert failover.home(100.0 + FAILBACK_AFTER_S - 1) is None
    assert failover.home(100.0 + FAILBACK_AFTER_S) == FIRST
    failover.moved(FIRST, 130.0)
    failover.heard((FIRST, SECOND), 131.0)
    assert failover.home(1000.0) is None  # home already


def test_an_instance_left_for_its_silence_waits_a_doubling_backoff_before_it_draws_us_back() -> (
    None
):
    """Its peers list it live, this agent cannot reach it: without the backoff the agent went
    back every FAILBACK_AFTER_S, and lost the API for FAILOVER_AFTER_S each time."""
    failover = Failover(FIRST, (FIRST, SECOND))
    failover.heard((FIRST, SECOND), 0.0)
    now, waits = 0.0, []
    for _ in range(4):
        failover.failed(now)
        now += FAILOVER_AFTER_S
        assert failover.failed(now) == SECOND
        failover.moved(SECOND, now)
        left = now
        failover.heard((SECOND, FIRST), now)
        while failover.home(now) is None:
            now += 1.0
        waits.append(now - left)
        failover.moved(FIRST, now)  # back, and it is silent again
    assert waits == [
        FAILBACK_AFTER_S,
        2 * FAILBACK_AFTER_S,
        4 * FAILBACK_AFTER_S,
        8 * FAILBACK_AFTER_S,
    ]


def test_an_answer_ends_the_silence() -> None:
    failover = Failover(FIRST, (FIRST, SECOND))
    failover.failed(100.0)
    failover.answered(100.0)
    assert failover.failed(100.0 + FAILOVER_AFTER_S) is None


def test_our_entry_is_found_wherever_it_stands_and_a_bad_list_is_no_news() -> None:
    """A list whose first entry is not the instance we talk to (a hostile one, or ours failed
    to parse) does not make another one 'current': the order would skip or go back."""
    failover = Failover(FIRST)
    failover.heard((SECOND, THIRD, FIRST), 0.0)
    assert failover.current == FIRST
    failover.heard((), 0.0)
    assert failover.known == (SECOND, THIRD, FIRST)
    failover.failed(0.0)
    assert failover.failed(FAILOVER_AFTER_S) == SECOND


def test_spellings_of_one_url_are_one_instance() -> None:
    spellings = [
        "https://A.example",
        "https://a.example.",
        "https://a.example:443",
        "HTTPS://a.example/",
    ]
    raw = [FIRST.to_json() | {"api_url": url} for url in spellings]
    assert [i.api_url for i in parse_instances(raw)] == ["https://a.example"]


def test_alone_there_is_nowhere_to_go() -> None:
    failover = Failover(FIRST)
    failover.heard((FIRST,), 0.0)
    assert failover.failed(0.0) is None
    assert failover.failed(1000.0) is None


def test_the_token_may_name_an_instance_otherwise_than_its_own_list() -> None:
    """The token says https://rv.example:51821; the instance lists itself by address. The join
    answer's WireGuard endpoint is the one it lists: by it the first answer makes them one, so
    the list does not hold the same instance twice."""
    by_name = Instance("https://rv.example:51821", FIRST.endpoint, FIRST.dns)
    failover = Failover(by_name)
    failover.heard((FIRST, SECOND), 0.0)
    failover.failed(0.0)
    assert failover.failed(FAILOVER_AFTER_S) == SECOND


def test_the_list_is_kept_with_the_membership(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    state.prepare()
    membership = replace(membership_at(FIRST.api_url), instances=(FIRST, SECOND))
    state.save_membership(membership)
    assert state.membership() == membership
    assert state.membership().moved_to(SECOND).instance() == SECOND  # type: ignore[union-attr]
    stored = json.loads((tmp_path / "membership.json").read_text())
    stored["instances"].append({"api_url": "http://evil", "endpoint": "x", "dns": "y"})
    (tmp_path / "membership.json").write_text(json.dumps(stored))
    assert state.membership().instances == (FIRST, SECOND)  # type: ignore[union-attr]


def test_a_long_name_that_fails_at_its_end_is_refused_at_once() -> None:
    """A pattern over the whole name backtracked exponentially on this (a ReDoS)."""
    name = "a" * 250 + "!"
    bad = FIRST.to_json() | {"endpoint": f"{name}:51820"}
    assert parse_instances([bad]) == ()


def membership_at(api: str, dns: str = FIRST.dns, network: str = "10.77.0.0/16") -> Membership:
    return Membership(
        api, "cred", "laptop", "10.77.0.2", network, "mesh.internal",
        dns, "a" * 43 + "=", FIRST.endpoint, "10.77.0.1",
    )  # fmt: skip


def test_a_url_with_credentials_is_unreachable_not_a_crash() -> None:
    """The review: `https://:@host` passed the list's check, and aiohttp's ValueError on every
    request escaped the watch loop until the agent exited, again at every restart."""
    membership = membership_at("https://:@127.0.0.1:9")
    with pytest.raises(client.Unreachable):
        asyncio.run(client.watch(membership, None, None, 1.0))


def test_a_stored_membership_with_an_unusable_url_is_refused(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    state.prepare()
    state.save_membership(membership_at("https://:@203.0.113.2:51821"))
    with pytest.raises(StateError, match="unusable API URL"):
        state.membership()


@pytest.mark.parametrize(
    "dns", ["localhost:53", "127.0.0.53:53", "10.77.0.1:53", "224.0.0.251:5353"]
)
def test_the_dns_server_must_be_outside_the_mesh_and_unicast(dns: str) -> None:
    with pytest.raises(ValueError):
        asyncio.run(dns_server(membership_at(FIRST.api_url, dns)))


def test_a_dns_server_listed_by_name_is_resolved() -> None:
    """The review: a name in `dns` reached dnspython's nameservers, whose ValueError ended the
    DNS-SD loop and then the agent. A name that resolves to a usable address works."""
    membership = membership_at(FIRST.api_url, "203.0.113.2:53")
    assert asyncio.run(dns_server(membership)) == ("203.0.113.2", 53)
    assert not outside_mesh("10.77.3.4", "10.77.0.0/16")
    assert outside_mesh("203.0.113.2", "10.77.0.0/16")


def test_only_listed_ip_literals_are_protected_and_no_name_is_resolved() -> None:
    assert literal_addresses((FIRST, THIRD)) == {ipaddress.ip_address("203.0.113.2")}


def test_an_unusable_next_instance_is_skipped_for_the_one_after() -> None:
    """The review: the next by URL did not resolve; every later failure chose it again, and the
    healthy third was never reached."""
    failover = Failover(FIRST)
    failover.heard((FIRST, SECOND, THIRD), 0.0)
    failover.failed(0.0)
    assert failover.failed(FAILOVER_AFTER_S) == SECOND
    failover.unusable(SECOND, FAILOVER_AFTER_S)
    assert failover.failed(FAILOVER_AFTER_S + 1) == THIRD


def test_a_backoff_holds_when_the_instance_leaves_the_list_or_answers_once() -> None:
    """The review: an instance missing from one list started its backoff again at 30 s, and one
    that answered a first watch and then failed cleared it: back every minute, for ever."""
    failover = Failover(FIRST, (FIRST, SECOND))
    failover.heard((FIRST, SECOND), 0.0)
    now, waits = 0.0, []
    for _ in range(4):
        failover.answered(now)  # it answers once, then goes silent for this agent
        failover.failed(now + 1)
        now += 1 + FAILOVER_AFTER_S
        assert failover.failed(now) == SECOND
        failover.moved(SECOND, now)
        left = now
        failover.heard((SECOND,), now)  # gone from the list for an answer
        failover.heard((SECOND, FIRST), now + 1)
        while failover.home(now) is None:
            now += 1.0
        waits.append(now - left)
        failover.moved(FIRST, now)
    # Listed live again from 1 s after the move: the first wait is that and FAILBACK_AFTER_S.
    assert waits == [
        FAILBACK_AFTER_S + 1,
        2 * FAILBACK_AFTER_S,
        4 * FAILBACK_AFTER_S,
        8 * FAILBACK_AFTER_S,
    ]
