"""The rendezvous image (docker/Dockerfile) run by docker/compose.yaml on a lab public host:
two agents behind port-restricted NATs mesh through it, and its data outlives the container."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.lab import Lab, NatType
from tests.lab.agents import MeshAgent, all_direct
from tests.lab.container import Compose, build_image, podman
from tests.lab.wait import wait_until

pytestmark = pytest.mark.lab

IMAGE_USER_ID = "10001"


@pytest.fixture(scope="module")
def image() -> str:
    return build_image()


@pytest.fixture
def compose(lab: Lab, image: str) -> Iterator[Compose]:
    host = lab.add_public_host("rendezvous")
    env = {"RENDEZVOUS_PUBLIC_ENDPOINT": f"{host.address}:51820"}
    deployment = Compose(host, f"meshpeer-{lab.run_id}", env)
    try:
        yield deployment
    finally:
        deployment.run("down", "-v", check=False)


def test_two_agents_behind_port_restricted_nats_mesh_through_the_container(
    lab: Lab, compose: Compose
) -> None:
    compose.start()
    token = compose.exec("rendezvous", "token", "create", "--uses", "2").stdout.strip()
    agents = [
        MeshAgent(lab.add_nat(f"site{n}", NatType.PORT_RESTRICTED).add_host(f"p{n}"), f"p{n}")
        for n in range(2)
    ]
    for agent in agents:
        agent.start(token)

    assert wait_until(lambda: all_direct(agents), 30), [a.output() for a in agents]
    first, second = agents
    assert first.host.ping(second.address()) and second.host.ping(first.address())
    peers = json.loads(compose.exec("rendezvous", "peers", "--json").stdout)
    assert {peer["name"] for peer in peers} == {"p0", "p1"}
    assert all(peer["endpoint"] for peer in peers)


def test_the_container_runs_unprivileged_checks_health_and_keeps_its_data(
    lab: Lab, compose: Compose
) -> None:
    compose.start()
    assert compose.exec("id", "-u").stdout.strip() == IMAGE_USER_ID
    # The image's own HEALTHCHECK, as the engine runs it.
    assert compose.podman("healthcheck", "run", compose.container, check=False).returncode == 0
    key = json.loads(compose.exec("rendezvous", "info", "--json").stdout)["public_key"]
    compose.exec("rendezvous", "token", "create")

    compose.run("down")  # the container goes, the named volume stays
    compose.start()
    info = json.loads(compose.exec("rendezvous", "info", "--json").stdout)
    assert info["public_key"] == key
    assert info["endpoint"] == compose.env["RENDEZVOUS_PUBLIC_ENDPOINT"]
    tokens = json.loads(compose.exec("rendezvous", "token", "list", "--json").stdout)
    assert len(tokens) == 1


def test_the_image_declares_its_ports_volume_user_and_health_check(image: str) -> None:
    inspected = json.loads(podman("image", "inspect", image).stdout)[0]
    config = inspected["Config"]
    assert set(config["ExposedPorts"]) == {"51820/udp", "53/udp", "53/tcp", "51821/tcp"}
    assert set(config["Volumes"]) == {"/var/lib/meshpeer-rendezvous"}
    assert config["User"] == "rendezvous"
    assert inspected["Healthcheck"]["Test"] == ["CMD", "rendezvous", "health"]
