"""`meshpeer run` on hosts behind lab NATs, with a real rendezvous: the mesh forms directly."""

from __future__ import annotations

import itertools
import time

import pytest

from tests.lab import Lab, NatType
from tests.lab.agents import MESHPEER, MeshAgent, all_direct, join_with_routes
from tests.lab.rendezvous import RendezvousServer
from tests.lab.wait import wait_until

pytestmark = pytest.mark.lab


def agents_behind_own_nats(lab: Lab, count: int) -> list[MeshAgent]:
    """Agents p0, p1, ... each on a host behind its own port-restricted NAT (not started)."""
    return [
        MeshAgent(lab.add_nat(f"site{n}", NatType.PORT_RESTRICTED).add_host(f"p{n}"), f"p{n}")
        for n in range(count)
    ]


def start_mesh(agents: list[MeshAgent], token: str, timeout_s: float = 20) -> None:
    for agent in agents:
        agent.start(token)
    assert wait_until(lambda: all_direct(agents), timeout_s), [a.output() for a in agents]


def test_two_peers_behind_port_restricted_nats_mesh_directly(lab: Lab) -> None:
    server = RendezvousServer(lab.add_public_host("rendezvous")).start()
    token = server.token(2)
    agents = agents_behind_own_nats(lab, 2)
    started = time.monotonic()
    for agent in agents:
        agent.start(token)

    assert wait_until(lambda: all_direct(agents), 20), [a.output() for a in agents]
    print(f"all pairs direct {time.monotonic() - started:.2f} s after starting the agents")
    for one, other in itertools.permutations(agents, 2):
        assert one.host.ping(other.address()), f"{one.name} cannot ping {other.name}"


def dig_endpoints(lab_host: MeshAgent, server: RendezvousServer) -> dict[str, str]:
    """Each peer's endpoint as dig reads it from the rendezvous (SRV port, A address)."""
    address = str(server.host.address)
    instances = lab_host.host.run(
        ["dig", f"@{address}", "+short", "_wireguard._udp.mesh.internal", "PTR"]
    ).stdout.split()
    found = {}
    for instance in instances:
        answer = lab_host.host.run(
            ["dig", f"@{address}", "+noall", "+answer", "+additional", instance, "SRV"]
        ).stdout
        fields = [line.split() for line in answer.splitlines() if line.strip()]
        port = next(f[6] for f in fields if f[3] == "SRV")
        host = next(f[4] for f in fields if f[3] == "A")
        name = next(f[4:] for f in fields if f[3] == "TXT")
        peer_name = next(item.strip('"')[5:] for item in name if item.startswith('"name='))
        found[peer_name] = f"{host}:{port}"
    return found


def test_four_peers_behind_four_kinds_of_nat_form_a_full_direct_mesh(lab: Lab) -> None:
    server = RendezvousServer(lab.add_public_host("rendezvous")).start()
    token = server.token(4)
    isp = lab.add_nat("isp", NatType.PORT_RESTRICTED, lan="100.64.0.0/24")
    nats = {
        "home": lab.add_nat("home", NatType.PORT_RESTRICTED),
        "office": lab.add_nat("office", NatType.PORT_RESTRICTED),
        "cafe": lab.add_nat("cafe", NatType.ADDRESS_RESTRICTED),
        "flat": lab.add_nat("flat", NatType.PORT_RESTRICTED, upstream=isp),
    }
    agents = [MeshAgent(nat.add_host(f"{name}-pc"), name) for name, nat in nats.items()]
    started = time.monotonic()
    for agent in agents:
        agent.start(token)

    assert wait_until(lambda: all_direct(agents), 30), [a.output() for a in agents]
    print(f"4 peers, all 6 pairs direct {time.monotonic() - started:.2f} s after start")
    for one, other in itertools.permutations(agents, 2):
        assert one.host.ping(other.address()), f"{one.name} cannot ping {other.name}"
    published = dig_endpoints(agents[0], server)
    public = {name: str(nat.public_address) for name, nat in nats.items()}
    public["flat"] = str(isp.public_address)
    assert {name: endpoint.split(":")[0] for name, endpoint in published.items()} == public
    status = agents[0].status()
    assert status is not None and {"public_key", "address", "peers"} <= status.keys()
    assert all(
        {"name", "public_key", "address", "endpoint", "path", "latest_handshake"} <= p.keys()
        for p in status["peers"]
    )


def test_a_late_joiner_meshes_with_all_and_removal_reaches_every_agent(lab: Lab) -> None:
    server = RendezvousServer(lab.add_public_host("rendezvous")).start()
    token = server.token(3)
    agents = agents_behind_own_nats(lab, 3)
    for agent in agents[:2]:
        agent.start(token)
    assert wait_until(lambda: all_direct(agents[:2]), 20), [a.output() for a in agents]

    joined = time.monotonic()
    agents[2].start(token)
    assert wait_until(lambda: all_direct(agents), 20), [a.output() for a in agents]
    print(f"late joiner direct with all {time.monotonic() - joined:.2f} s after it started")
    assert agents[2].host.ping(agents[0].address())

    server.cli("peer", "remove", "p2")
    assert wait_until(lambda: all("p2" not in a.paths() for a in agents[:2]), 5)
    removed = agents[2].process
    assert removed is not None
    assert wait_until(lambda: not removed.running(), 10)
    # Not 0: a removed machine must not look like a clean stop (systemd would think all is well).
    assert removed.popen.returncode == 2, agents[2].output()
    assert "the operator removed this machine from the mesh" in agents[2].output()


def test_two_peers_behind_one_nat_without_hairpinning_meet_on_the_lan(lab: Lab) -> None:
    server = RendezvousServer(lab.add_public_host("rendezvous")).start()
    token = server.token(2)
    office = lab.add_nat("office", NatType.PORT_RESTRICTED, hairpin=False)
    agents = [MeshAgent(office.add_host(f"desk{n}"), f"desk{n}") for n in range(2)]
    for agent in agents:
        agent.start(token)

    def on_the_lan() -> bool:
        return all(set(agent.paths().values()) == {"lan"} for agent in agents)

    assert wait_until(on_the_lan, 20), [a.output() for a in agents]
    assert agents[0].host.ping(agents[1].address())
    assert agents[1].host.ping(agents[0].address())


def test_a_peer_carries_its_lan_for_the_mesh(lab: Lab) -> None:
    """Site to site: a gateway advertises its office LAN; a remote peer reaches a host on it."""
    server = RendezvousServer(lab.add_public_host("rendezvous")).start()
    office = lab.add_nat("office", NatType.PORT_RESTRICTED)
    gateway_host, printer = office.add_host("gateway"), office.add_host("printer")
    office_lan = str(office.lan.network)
    gateway = join_with_routes(server, gateway_host, "gateway", [office_lan], grant=False)
    laptop = MeshAgent(lab.add_nat("home", NatType.PORT_RESTRICTED).add_host("laptop"), "laptop")
    laptop.start(server.token(), "--accept-routes")  # peers' routes are off by default
    assert wait_until(lambda: all_direct([gateway, laptop]), 20), gateway.output()
    # The printer answers the mesh through the gateway, as the office router would be told to.
    printer.run(["ip", "route", "add", "10.77.0.0/16", "via", str(gateway_host.address)])
    # Asked for, not granted: nobody routes the office LAN to the gateway yet.
    assert "wait for the operator" in gateway.output()
    assert not laptop.host.ping(printer.address)
    assert [peer["routes"] for peer in (laptop.status() or {"peers": []})["peers"]] == [[]]

    server.cli("peer", "routes", "approve", "gateway")
    assert wait_until(lambda: laptop.host.ping(printer.address), 10), laptop.output()
    status = laptop.status()
    assert status is not None
    [peer] = status["peers"]
    assert peer["routes"] == [office_lan]


def test_tunnels_outlive_the_rendezvous_and_agents_reconnect(lab: Lab) -> None:
    server = RendezvousServer(lab.add_public_host("rendezvous")).start()
    token = server.token(3)
    agents = agents_behind_own_nats(lab, 2)
    start_mesh(agents, token)
    addresses = [agent.address() for agent in agents]

    server.kill()
    time.sleep(3)
    assert all(agent.process is not None and agent.process.running() for agent in agents)
    assert agents[0].host.ping(addresses[1]) and agents[1].host.ping(addresses[0])
    unreachable = f"cannot reach {server.api_url}: connection refused; retrying in"
    assert all(unreachable in agent.output() for agent in agents)

    server.start()  # the same data folder: the agents' credentials still hold
    late = MeshAgent(lab.add_nat("site2", NatType.PORT_RESTRICTED).add_host("p2"), "p2")
    late.start(token)
    assert wait_until(lambda: all_direct([*agents, late]), 40), late.output()


def assert_one_line(agent: MeshAgent, code: int, words: str) -> None:
    process = agent.process
    assert process is not None
    assert wait_until(lambda: not process.running(), 20), agent.output()
    assert process.popen.returncode == code, agent.output()
    lines = agent.output().strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0] and words in lines[0], lines
    assert "Traceback" not in agent.output()


def test_user_mistakes_on_a_real_host_cost_one_line_and_exit_2(lab: Lab) -> None:
    server = RendezvousServer(lab.add_public_host("rendezvous")).start()
    token = server.token(1)
    home = lab.add_nat("home", NatType.PORT_RESTRICTED)
    first = MeshAgent(home.add_host("first"), "first").start(token)
    assert wait_until(lambda: first.status() is not None, 15), first.output()

    used_up = MeshAgent(home.add_host("second"), "second").start(token)
    assert_one_line(used_up, 2, "used up")

    taken_host = home.add_host("third")
    taken_host.run(["ip", "link", "add", "wg0", "type", "veth", "peer", "name", "wg0-peer"])
    fresh = server.token()
    taken = MeshAgent(taken_host, "third").start(fresh)
    assert_one_line(taken, 2, "interface wg0 exists and meshpeer did not make it")
    assert taken_host.run(["ip", "link", "show", "wg0"]).returncode == 0  # left alone

    no_tool_host = home.add_host("fourth")
    no_tool = MeshAgent(no_tool_host, "fourth")
    no_tool.start(server.token())  # wireguard-go on PATH: control
    assert wait_until(lambda: no_tool.status() is not None, 15), no_tool.output()
    assert no_tool.process is not None
    no_tool.process.stop()
    bare = MeshAgent(home.add_host("fifth"), "fifth")
    bare.process = bare.host.spawn(
        "meshpeer-fifth",
        [
            "env",
            "PATH=/nonexistent",
            MESHPEER,
            "run",
            "--backend",
            "userspace",
            "--state-dir",
            str(bare.state_dir),
            "--name",
            "fifth",
            "--token",
            server.token(),
        ],
    )
    assert_one_line(bare, 2, "wireguard-go is not installed")

    nobody = MeshAgent(home.add_host("sixth"), "sixth")
    nobody.process = nobody.host.spawn(
        "meshpeer-sixth",
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            MESHPEER,
            "run",
            "--state-dir",
            "/tmp/meshpeer-nobody-state",
        ],
    )
    assert_one_line(nobody, 2, "needs root")


def test_the_agent_brings_wireguard_go_back_when_it_dies(lab: Lab) -> None:
    server = RendezvousServer(lab.add_public_host("rendezvous")).start()
    token = server.token(2)
    agents = agents_behind_own_nats(lab, 2)
    start_mesh(agents, token)

    assert agents[0].process is not None
    # Only this agent's own wireguard-go (the lab's hosts share one PID namespace).
    agents[0].host.run(["pkill", "-KILL", "-P", str(agents[0].process.pid), "-x", "wireguard-go"])

    assert wait_until(lambda: "making it again" in agents[0].output(), 10), agents[0].output()
    assert wait_until(lambda: all_direct(agents), 30), [a.output() for a in agents]
    assert agents[0].host.ping(agents[1].address())


def test_down_stops_the_agent_and_removes_only_what_it_made(lab: Lab) -> None:
    server = RendezvousServer(lab.add_public_host("rendezvous")).start()
    token = server.token()
    host = lab.add_nat("home", NatType.PORT_RESTRICTED).add_host("laptop")
    host.run(["ip", "link", "add", "wg9", "type", "veth", "peer", "name", "wg9-peer"])
    agent = MeshAgent(host, "laptop").start(token)
    assert wait_until(lambda: agent.status() is not None, 15), agent.output()
    key_file = agent.state_dir / "key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    first_key = key_file.read_text()

    down = host.run([MESHPEER, "down", "--state-dir", str(agent.state_dir)])
    assert "stopped meshpeer" in down.stdout
    assert agent.process is not None and not agent.process.running()
    assert host.run(["ip", "link", "show", "wg0"], check=False).returncode != 0
    assert host.run(["ip", "link", "show", "wg9"]).returncode == 0  # not ours: untouched
    assert "interface wg0 removed" in agent.output()

    again = MeshAgent(host, "laptop").start(None)  # resumes without a token, same key
    assert wait_until(lambda: again.status() is not None, 15), again.output()
    assert key_file.read_text() == first_key
    assert server.cli("peers", "--json").count('"name": "laptop"') == 1
