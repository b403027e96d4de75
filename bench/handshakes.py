"""Handshake and keepalive capacity of the rendezvous, against wireguard-go and the crypto floor.

    .venv/bin/python bench/handshakes.py [--peers N] [--rounds R] [--seconds S] [--smoke]

1. core: the sans-I/O responder alone, on one core: handshakes/s, the time per handshake, and its
   ratio to the bare cost of its X25519 operations (one key generation and three exchanges),
   measured in the same run.
2. keepalives: transport keepalives/s the responder core processes on one core (decrypt, replay
   window, endpoint check) on established sessions.
3. wire: the same closed-loop generator of valid initiations from N keys (bench/loadgen.py) on
   core 1, against `rendezvous serve` and against wireguard-go, each on core 0 (GOMAXPROCS=1), in
   a network namespace of the benchmark's own, alternating rounds: completed handshakes/s of
   each, their ratio, and each server's CPU share (near 1.0 means the server was the limit).

Figures are medians of R rounds, with min and max; the machine is shared, so read the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from meshpeer.peer import uapi
from meshpeer.rendezvous import noise, settings
from meshpeer.rendezvous.handshake import Responder
from meshpeer.rendezvous.initiator import Initiator
from meshpeer.rendezvous.registry import Registry

import loadgen

BIN = Path(sys.executable).parent
OURS_PORT, WIREGUARD_GO_PORT = 51820, 51830


# -- 1 and 2: the responder core ----------------------------------------------------------------


CHUNK = 100  # rekeys and floor samples alternate in chunks this size: noise hits both alike


def core_round(peers: int) -> tuple[float, float, float, float]:
    """(handshakes/s, seconds per handshake) for rekeys, seconds for a peer's first one, and
    the X25519 floor, timed in alternating chunks with the rekeys.

    A peer's first handshake after the rendezvous starts costs one more X25519 exchange (the
    static-static secret, then kept); every later one, a rekey every two minutes, does not."""
    responder = Responder(X25519PrivateKey.generate(), initiations_per_s_under_load=10**9)
    initiators = [
        Initiator(X25519PrivateKey.generate(), responder.public_key) for _ in range(peers)
    ]
    for initiator in initiators:
        responder.authorize(initiator.public_key)
    first = time_handshakes(responder, [i.initiation(time.time()) for i in initiators], 0.0)
    rekeys = [initiator.initiation(time.time() + 1) for initiator in initiators]
    elapsed = floor = 0.0
    for start in range(0, peers, CHUNK):
        chunk = rekeys[start : start + CHUNK]
        elapsed += time_handshakes(responder, chunk, 1.0)
        floor += crypto_floor(len(chunk)) * len(chunk)
    if responder.counts["handshakes"] != 2 * peers:  # a benchmark of failures means nothing
        raise SystemExit(f"only {responder.counts['handshakes']} handshakes: {responder.drops}")
    return peers / elapsed, elapsed / peers, first / peers, floor / peers


def time_handshakes(responder: Responder, initiations: list[bytes], now: float) -> float:
    started = time.perf_counter()
    for number, initiation in enumerate(initiations):
        responder.receive_datagram(initiation, ("198.51.100.1", 1024 + number), now)
    responder.datagrams_to_send()
    return time.perf_counter() - started


def crypto_floor(samples: int) -> float:
    """Seconds for one key generation and three exchanges: what a handshake cannot go below."""
    ours, theirs = X25519PrivateKey.generate(), X25519PrivateKey.generate().public_key()
    started = time.perf_counter()
    for _ in range(samples):
        X25519PrivateKey.generate().exchange(theirs)
        ours.exchange(theirs)
        ours.exchange(theirs)
    return (time.perf_counter() - started) / samples


def keepalive_round(peers: int, per_peer: int) -> float:
    """Keepalives/s on established sessions, each from its peer's confirmed endpoint."""
    responder = Responder(X25519PrivateKey.generate(), initiations_per_s_under_load=10**9)
    sessions = []
    for number in range(peers):
        initiator = Initiator(X25519PrivateKey.generate(), responder.public_key)
        responder.authorize(initiator.public_key)
        source = ("198.51.100.1", 1024 + number)
        responder.receive_datagram(initiator.initiation(time.time()), source, 0.0)
        for datagram, _ in responder.datagrams_to_send():
            initiator.receive(datagram)
        sessions.append((initiator, source))
    keepalives = [
        (initiator.keepalive(), source) for _ in range(per_peer) for initiator, source in sessions
    ]
    while responder.next_event() is not None:
        pass
    started = time.perf_counter()
    for datagram, source in keepalives:
        responder.receive_datagram(datagram, source, 1.0)
    elapsed = time.perf_counter() - started
    accepted = responder.counts["transport"]
    if accepted != len(keepalives):
        raise SystemExit(f"only {accepted} of {len(keepalives)} keepalives: {responder.drops}")
    return len(keepalives) / elapsed


# -- 3: on the wire, ours against wireguard-go -----------------------------------------------------


class Server:
    def __init__(self, name: str, process: subprocess.Popen[bytes], public_key: bytes, port: int):
        self.name = name
        self.process = process
        self.public_key = public_key
        self.port = port

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()


def start_ours(data_dir: Path, peer_keys: list[bytes]) -> Server:
    async def register() -> bytes:
        registry = await Registry.open(
            data_dir, settings.Overrides(network="10.80.0.0/12", public_endpoint="127.0.0.1:51820")
        )
        try:
            await registry.add_peers([(key, f"p{n}") for n, key in enumerate(peer_keys)])
            return registry.public_key
        finally:
            await registry.close()

    public_key = asyncio.run(register())
    listen = f"127.0.0.1:{OURS_PORT}"
    command = [str(BIN / "rendezvous"), "serve", "--data-dir", str(data_dir)]
    command += ["--wg-listen", listen, "--public-endpoint", listen, "--log-level", "warning"]
    command += ["--api-listen", "127.0.0.1:51821", "--dns-listen", "127.0.0.1:5300"]
    process = subprocess.Popen(
        loadgen.pinned(loadgen.SERVER_CORE, command), stderr=subprocess.DEVNULL
    )
    wait_for(lambda: _udp_port_open(OURS_PORT), "rendezvous serve")
    return Server("rendezvous", process, public_key, OURS_PORT)


def start_wireguard_go(peer_keys: list[bytes]) -> Server:
    interface = f"mpb{os.getpid() % 100000}"
    env = {**os.environ, "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1", "GOMAXPROCS": "1"}
    command = loadgen.pinned(loadgen.SERVER_CORE, ["wireguard-go", "-f", interface])
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    control = Path("/var/run/wireguard") / f"{interface}.sock"
    wait_for(control.exists, "wireguard-go's UAPI socket")
    private_key = X25519PrivateKey.generate()
    peers = [
        uapi.PeerConfig(key, (f"10.{96 + n // 65536}.{n // 256 % 256}.{n % 256}/32",))
        for n, key in enumerate(peer_keys)
    ]
    uapi_set(control, uapi.set_device(private_key.private_bytes_raw(), WIREGUARD_GO_PORT))
    uapi_set(control, uapi.set_peers(peers, []))
    return Server("wireguard-go", process, noise.public_bytes(private_key), WIREGUARD_GO_PORT)


def uapi_set(control: Path, request: bytes) -> None:
    uapi.check_errno(loadgen.uapi_exchange(control, request))


def wait_for(predicate: Callable[[], bool], what: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} did not come up")
        time.sleep(0.05)


def _udp_port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def wire_rounds(
    peers: int, rounds: int, seconds: float, window: int
) -> dict[str, list[tuple[float, float]]]:
    """{server: [(handshakes/s, server CPU share), ...]}, rounds alternating between servers."""
    results: dict[str, list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as scratch, loadgen.private_namespace():
        keys = [X25519PrivateKey.generate() for _ in range(peers)]
        public_keys = [noise.public_bytes(key) for key in keys]
        servers = [start_ours(Path(scratch), public_keys), start_wireguard_go(public_keys)]
        try:
            loadgen.pin(loadgen.LOAD_CORE)
            factories = {s.name: loadgen.InitiationFactory(s.public_key, keys) for s in servers}
            for _ in range(rounds):
                for server in servers:
                    before = loadgen.cpu_seconds(server.process.pid)
                    target = ("127.0.0.1", server.port)
                    result = loadgen.blast(factories[server.name], target, seconds, window)
                    share = (loadgen.cpu_seconds(server.process.pid) - before) / result.seconds
                    results.setdefault(server.name, []).append((result.rate, share))
        finally:
            for server in servers:
                server.stop()
    return results


# -- report -------------------------------------------------------------------------------------


def spread(values: list[float], unit: str = "") -> str:
    return (
        f"median {statistics.median(values):,.0f}{unit} "
        f"(min {min(values):,.0f}, max {max(values):,.0f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0, help="length of one wire round")
    parser.add_argument("--window", type=int, default=16, help="initiations in flight")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: does it still run?")
    args = parser.parse_args()
    if args.smoke:
        args.peers, args.rounds, args.seconds = 60, 1, 0.5
    print(loadgen.machine())
    if shutil.which("wireguard-go") is None or os.geteuid() != 0:
        raise SystemExit("needs root and wireguard-go (bash tests/setup)")

    loadgen.pin(loadgen.SERVER_CORE)
    rates, costs, firsts, floors, keepalives = [], [], [], [], []
    for _ in range(args.rounds):
        rate, cost, first, floor = core_round(args.peers)
        rates.append(rate)
        costs.append(cost)
        firsts.append(first)
        floors.append(floor)
        keepalives.append(keepalive_round(max(args.peers // 10, 10), 20))
    cost, floor = statistics.median(costs), statistics.median(floors)
    ratios = [one / other for one, other in zip(costs, floors, strict=True)]
    print(f"\n1. responder core, one core, {args.rounds} rounds of {args.peers} peers rekeying")
    print(f"   handshakes/s {spread(rates)}")
    print(f"   per handshake {cost * 1e6:.0f} us; X25519 floor {floor * 1e6:.0f} us; ratio")
    print(
        f"   {statistics.median(ratios):.2f} (min {min(ratios):.2f}, max {max(ratios):.2f}; "
        "goal: at most 1.4); a peer's first handshake after a start:"
    )
    print(f"   {statistics.median(firsts) * 1e6:.0f} us (one more exchange)")
    print("\n2. keepalives on established sessions, responder core, one core")
    print(f"   keepalives/s {spread(keepalives)}")

    wire = wire_rounds(args.peers, args.rounds, args.seconds, args.window)
    print(
        f"\n3. on the wire: one generator on core {loadgen.LOAD_CORE}, each server on core "
        f"{loadgen.SERVER_CORE}, {args.rounds} alternating rounds of {args.seconds:g} s, "
        f"{args.peers} keys, {args.window} initiations in flight"
    )
    for name, samples in wire.items():
        print(f"   {name:<13} handshakes/s {spread([rate for rate, _ in samples])}; ", end="")
        print(f"server CPU share {statistics.median([share for _, share in samples]):.2f}")
    ours = statistics.median(rate for rate, _ in wire["rendezvous"])
    theirs = statistics.median(rate for rate, _ in wire["wireguard-go"])
    print(f"   ratio rendezvous / wireguard-go: {ours / theirs:.2f} (goal: at least 0.5)")


if __name__ == "__main__":
    main()
