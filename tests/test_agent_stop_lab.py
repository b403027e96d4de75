"""`meshpeer run` stops within 2 s of SIGINT or SIGTERM in every phase, leaves nothing behind,
and every mistake that can be seen before a token use costs none (issue 14)."""

from __future__ import annotations

import json
import signal
import time

import pytest

from tests.lab import Host, Lab, NatType
from tests.lab.agents import MESHPEER, MeshAgent, all_direct
from tests.lab.rendezvous import RendezvousServer
from tests.lab.wait import wait_until

pytestmark = pytest.mark.lab


def stop_within(agent: MeshAgent, signum: signal.Signals, limit_s: float = 2.0) -> float:
    process = agent.process
    assert process is not None and process.running(), agent.output()
    started = time.monotonic()
    process.popen.send_signal(signum)
    process.popen.wait(10)
    took = time.monotonic() - started
    assert took < limit_s, f"{signum.name}: stopped {took:.2f} s after it\n{agent.output()}"
    assert "Traceback" not in agent.output(), agent.output()
    return took


def no_interface(host: Host, name: str = "wg0") -> bool:
    return host.run(["ip", "link", "show", name], check=False).returncode != 0


def uses_left(server: RendezvousServer) -> list[int]:
    return [token["uses_left"] for token in json.loads(server.cli("token", "list", "--json"))]


def test_a_stop_while_the_rendezvous_is_unreachable_ends_the_retries_at_once(lab: Lab) -> None:
    server = RendezvousServer(lab.add_public_host("rendezvous")).start()
    token = server.token(1)
    server.kill()  # and it stays down
    host = lab.add_nat("home", NatType.PORT_RESTRICTED).add_host("pc")
    for signum in (signal.SIGTERM, signal.SIGINT):
        agent = MeshAgent(host, "pc").start(token)
        output = agent.output
        assert wait_until(lambda: "retrying in" in output(), 15), agent.output()  # noqa: B023
        stop_within(agent, signum)
        assert no_interface(host)


def test_a_stop_while_running_removes_the_interface_within_2_s(lab: Lab) -> None:
    server = RendezvousServer(lab.add_public_host("rendezvous")).start()
    token = server.token(2)
    agents = [
        MeshAgent(lab.add_nat(f"site{n}", NatType.PORT_RESTRICTED).add_host(f"p{n}"), f"p{n}")
        for n in range(2)
    ]
    for agent in agents:
        agent.start(token)
    assert wait_until(lambda: all_direct(agents), 20)
    for agent, signum in zip(agents, (signal.SIGTERM, signal.SIGINT), strict=True):
        stop_within(agent, signum)
        assert no_interface(agent.host)


def test_a_removed_peer_started_again_stops_by_itself_and_cleans_up(lab: Lab) -> None:
    server = RendezvousServer(lab.add_public_host("rendezvous")).start()
    host = lab.add_nat("home", NatType.PORT_RESTRICTED).add_host("pc")
    agent = MeshAgent(host, "pc").start(server.token(1), "--dns-sd-interval", "1")
    assert wait_until(lambda: agent.status() is not None, 15), agent.output()
    server.cli("peer", "remove", "pc")
    first = agent.process
    assert first is not None
    assert wait_until(lambda: not first.running(), 10), agent.output()
    again = MeshAgent(host, "pc").start(None, "--dns-sd-interval", "1")  # resumes, then learns
    process = again.process
    assert process is not None
    assert wait_until(lambda: not process.running(), 10), again.output()
    assert process.popen.returncode == 2
    assert "the operator removed this machine from the mesh" in again.output()
    assert no_interface(host)


def test_mistakes_seen_before_joining_cost_no_token_use(lab: Lab) -> None:
    server = RendezvousServer(lab.add_public_host("rendezvous")).start()
    token = server.token(5)
    home = lab.add_nat("home", NatType.PORT_RESTRICTED)

    long_name = MeshAgent(home.add_host("a"), "a").start(token, "--interface", "wg-much-too-long0")
    assert_one_line(long_name, "--interface")

    taken_host = home.add_host("b")
    holder = taken_host.udp_socket(51820)  # as an existing wg-quick's wg0 would
    taken = MeshAgent(taken_host, "b").start(token)
    assert_one_line(taken, "udp/51820 is taken")
    _ = holder

    first = MeshAgent(home.add_host("c"), "c").start(token)
    assert wait_until(lambda: first.status() is not None, 15), first.output()
    second = MeshAgent(first.host, "c2").start(None)  # the same state folder
    assert_one_line(second, "another `meshpeer run`")
    assert first.process is not None and first.process.running()

    other = RendezvousServer(lab.add_public_host("elsewhere")).start()
    assert first.process is not None
    first.process.stop()
    switch = MeshAgent(first.host, "c3").start(other.token(1))
    assert_one_line(switch, "meshpeer leave")
    assert uses_left(other) == [1]
    assert uses_left(server) == [4]  # only the one machine that joined spent a use


def assert_one_line(agent: MeshAgent, words: str) -> None:
    process = agent.process
    assert process is not None
    assert wait_until(lambda: not process.running(), 15), agent.output()
    assert process.popen.returncode == 2, agent.output()
    errors = [line for line in agent.output().splitlines() if "error" in line]
    assert len(errors) == 1 and words in errors[0], agent.output()
    assert "Traceback" not in agent.output()


def test_a_ctrl_c_at_start_up_is_quiet(lab: Lab) -> None:
    host = lab.add_public_host("pc")
    for delay in (0.1, 0.3, 0.6):
        for signum in (signal.SIGINT, signal.SIGTERM):
            process = host.spawn("early", [MESHPEER, "run", "--state-dir", str(host.dir / "s")])
            time.sleep(delay)
            started = time.monotonic()
            process.popen.send_signal(signum)
            process.popen.wait(10)
            assert time.monotonic() - started < 2.0
            assert "Traceback" not in process.output(), process.output()


def test_leave_takes_the_machine_out_and_lets_it_join_another_mesh(lab: Lab) -> None:
    server = RendezvousServer(lab.add_public_host("rendezvous")).start()
    host = lab.add_nat("home", NatType.PORT_RESTRICTED).add_host("pc")
    agent = MeshAgent(host, "pc").start(server.token(1))
    assert wait_until(lambda: agent.status() is not None, 15), agent.output()
    left = host.run([MESHPEER, "leave", "--state-dir", str(agent.state_dir)])
    assert "left the mesh of" in left.stdout, left.stdout
    assert agent.process is not None and not agent.process.running()
    assert no_interface(host)
    assert "pc" not in server.peers()
    other = RendezvousServer(lab.add_public_host("elsewhere")).start()
    moved = MeshAgent(host, "pc").start(other.token(1))
    assert wait_until(lambda: moved.status() is not None, 15), moved.output()
    assert "pc" in other.peers()


def test_down_on_a_hung_or_vanished_agent_says_so_and_fails(lab: Lab) -> None:
    server = RendezvousServer(lab.add_public_host("rendezvous")).start()
    token = server.token(2)
    home = lab.add_nat("home", NatType.PORT_RESTRICTED)
    down = [MESHPEER, "down", "--state-dir"]

    hung = MeshAgent(home.add_host("hung"), "hung").start(token)
    assert wait_until(lambda: hung.status() is not None, 15), hung.output()
    assert hung.process is not None
    hung.process.popen.send_signal(signal.SIGSTOP)
    result = hung.host.run([*down, str(hung.state_dir)], check=False, timeout=30)
    assert result.returncode == 1 and "still running 5 s after SIGTERM" in result.stderr, result
    assert "stopped meshpeer" not in result.stdout  # the old `down` printed this, and lied
    assert not no_interface(hung.host)  # it is still there, as the error says
    hung.process.popen.send_signal(signal.SIGCONT)  # it takes the SIGTERM now, and stops
    assert wait_until(lambda: no_interface(hung.host), 10)

    vanished = MeshAgent(home.add_host("gone"), "gone").start(token)
    assert wait_until(lambda: vanished.status() is not None, 15), vanished.output()
    assert vanished.process is not None
    vanished.process.popen.send_signal(signal.SIGKILL)  # wireguard-go and wg0 stay behind
    vanished.process.popen.wait(5)
    result = vanished.host.run([*down, str(vanished.state_dir)], check=False)
    assert result.returncode == 1 and "stopped without cleaning up" in result.stderr, result
    assert "removed the wg0 it left" in result.stderr
    assert no_interface(vanished.host)
