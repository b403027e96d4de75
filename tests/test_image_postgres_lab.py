"""docker/compose.yaml's profile `postgres` run as README's "Several rendezvous on PostgreSQL"
says: PostgreSQL and a rendezvous on one lab public host, a second rendezvous alone on another,
pointed at the first's PostgreSQL over the lab's internet (TLS, password) and holding the
first's TLS files. Both serve one mesh: one WireGuard key and certificate, each lists the
other, a peer that joined through one is in the other's DNS, and agents that joined through
different instances reach each other directly."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from tests.lab import Host, Lab, NatType
from tests.lab.agents import MeshAgent, all_direct
from tests.lab.container import Compose, build_image, build_postgres_image
from tests.lab.rendezvous import API_PORT
from tests.lab.wait import wait_until

pytestmark = pytest.mark.lab

ZONE = "mesh.internal."
# Reads the instance's own admin token from its data folder (the container's working folder)
# and asks an API for the full watch answer, accepting only the pinned certificate.
_WATCH = """
import asyncio, sys, aiohttp
from meshpeer.common.aiohttp_pinning import PinnedKey
async def main():
    headers = {"Authorization": "Bearer " + open("admin-token").read().strip()}
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.get(sys.argv[1] + "/v1/watch", ssl=PinnedKey(sys.argv[2])) as answer:
            answer.raise_for_status()
            sys.stdout.write(await answer.text())
asyncio.run(main())
"""


@pytest.fixture(scope="module")
def images() -> None:
    build_image()
    build_postgres_image()


@pytest.fixture
def deployment(lab: Lab, images: None) -> Iterator[tuple[Compose, Compose]]:
    first_host = lab.add_public_host("rendezvous1")
    second_host = lab.add_public_host("rendezvous2")
    password = secrets.token_hex(16)
    first = Compose(
        first_host,
        f"meshpeer-{lab.run_id}-first",
        {
            **_public(first_host),
            "POSTGRES_PASSWORD": password,
            "RENDEZVOUS_DATABASE": "postgresql://meshpeer@127.0.0.1:5432/meshpeer",
            "POSTGRES_LISTEN": f"127.0.0.1,{first_host.address}",
            "POSTGRES_ALLOW": f"{second_host.address}/32",
        },
        profiles=["postgres"],
    )
    remote = f"postgresql://meshpeer@{first_host.address}:5432/meshpeer?sslmode=require"
    second = Compose(
        second_host,
        f"meshpeer-{lab.run_id}-second",
        {**_public(second_host), "POSTGRES_PASSWORD": password, "RENDEZVOUS_DATABASE": remote},
    )
    try:
        yield first, second
    finally:
        for compose in (second, first):
            compose.run("down", "-v", check=False)


def _public(host: Host) -> dict[str, str]:
    return {"RENDEZVOUS_PUBLIC_ENDPOINT": f"{host.address}:51820"}


def copy_tls_files(first: Compose, second: Compose) -> None:
    """README's two commands: the first instance's tls.crt and tls.key, into the second's
    volume before it ever serves."""
    archive = first.exec("tar", "-c", "tls.crt", "tls.key").stdout
    extract = ("run", "--rm", "--no-deps", "-T", "--entrypoint", "tar", "rendezvous", "-x")
    second.run(*extract, "-f", "-", stdin=archive)


def tls_connections_from(first: Compose, host: Host) -> int:
    """How many of PostgreSQL's connections come from `host`, all of them over TLS."""
    query = (  # the lab's own IPv4Address: nothing to inject
        "SELECT count(*) FILTER (WHERE ssl), count(*) FROM pg_stat_activity "  # noqa: S608
        f"JOIN pg_stat_ssl USING (pid) WHERE client_addr = '{host.address}'"
    )
    psql = ["psql", "--no-psqlrc", "--tuples-only", "--no-align", "--field-separator=,"]
    answer = first.exec(*psql, "--host=/var/run/postgresql", "-c", query, service="postgres")
    over_tls, connections = (int(count) for count in answer.stdout.strip().split(","))
    assert over_tls == connections
    return connections


def info(compose: Compose) -> dict[str, str]:
    facts: dict[str, str] = json.loads(compose.exec("rendezvous", "info", "--json").stdout)
    return facts


def listed_instances(via: Compose, api_url: str, pin: str) -> set[str]:
    """The API URLs the instance at `api_url` lists, asked with the first's admin token."""
    result = via.exec("python3", "-c", _WATCH, api_url, pin, check=False)
    if result.returncode != 0:
        return set()
    answer: dict[str, Any] = json.loads(result.stdout)
    return {instance["api_url"] for instance in answer["instances"]}


def each_lists(via: Compose, urls: set[str], pin: str) -> dict[str, set[str]]:
    return {url: listed_instances(via, url, pin) for url in urls}


def dig_address(asking: Host, server: Host, name: str) -> str:
    query = ["dig", f"@{server.address}", "+time=2", "+tries=1", "+short", f"{name}.{ZONE}", "A"]
    return asking.run(query).stdout.strip()


def test_two_rendezvous_on_the_postgres_profile_serve_one_mesh(
    lab: Lab, deployment: tuple[Compose, Compose]
) -> None:
    first, second = deployment
    first.start()  # waits until PostgreSQL has made its role and the rendezvous reached it
    copy_tls_files(first, second)
    second.start()

    assert tls_connections_from(first, second.host) > 0  # pg_hba: no other way in

    facts = [info(first), info(second)]
    assert facts[0]["public_key"] == facts[1]["public_key"]  # from the database
    assert facts[0]["tls_pin"] == facts[1]["tls_pin"]  # the copied certificate
    urls = {f"https://{compose.host.address}:{API_PORT}" for compose in (first, second)}
    pin = facts[0]["tls_pin"]
    both = {url: urls for url in urls}  # each instance lists both (a heartbeat every 5 s)
    assert wait_until(lambda: each_lists(first, urls, pin) == both, 15), each_lists(
        first, urls, pin
    )

    # One agent joins through each instance; each learns the other through its own.
    tokens = [
        compose.exec("rendezvous", "token", "create").stdout.strip() for compose in (first, second)
    ]
    lab.join_tokens.extend(tokens)
    agents = [
        MeshAgent(lab.add_nat(f"site{n}", NatType.PORT_RESTRICTED).add_host(f"p{n}"), f"p{n}")
        for n in range(2)
    ]
    for agent, token in zip(agents, tokens, strict=True):
        agent.start(token)
    assert wait_until(lambda: all_direct(agents), 30), [a.output() for a in agents]
    assert agents[0].host.ping(agents[1].address())

    # p0 joined through the first instance, p1 through the second: each is in the other's DNS.
    joined_through = [first, second]
    for agent, compose in zip(agents, reversed(joined_through), strict=True):
        assert dig_address(agents[0].host, compose.host, agent.name) == agent.address()
