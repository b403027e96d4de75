"""The `rendezvous` command as a user runs it: outputs, exit codes, one-line errors."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from meshpeer.common.keys import encode_key
from meshpeer.rendezvous import settings as config
from meshpeer.rendezvous.noise import public_bytes
from meshpeer.rendezvous.registry import Registry
from tests.lab.wireguard import KeyPair

ENTRY = [sys.executable, "-m", "meshpeer.rendezvous.cli"]


def rendezvous(
    *argv: str, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, **(env or {})}
    return subprocess.run(
        [*ENTRY, *argv], capture_output=True, text=True, timeout=timeout, env=environment
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int, words: str) -> None:
    assert result.returncode == code, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("rendezvous") and ": error: " in lines[0], lines[0]
    assert words in lines[0], lines[0]


def test_without_a_command_it_prints_help() -> None:
    result = rendezvous()
    assert result.returncode == 0 and "token" in result.stdout and "serve" in result.stdout


def served(data_dir: Path, public_endpoint: str = "192.0.2.10:51820") -> Path:
    """A data folder as a `rendezvous serve` that started leaves it: identity and settings."""

    async def serve_once() -> None:
        given = config.Overrides(public_endpoint=public_endpoint)
        registry = await Registry.open(data_dir, given, store=False)
        await registry.keep_settings()
        await registry.close()

    asyncio.run(serve_once())
    return data_dir


def free_port(*kinds: socket.SocketKind) -> int:
    """A port free for every kind at once (DNS takes it over UDP and TCP), held while found."""
    while True:
        with contextlib.ExitStack() as held:
            first = held.enter_context(socket.socket(socket.AF_INET, kinds[0]))
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            try:
                for kind in kinds[1:]:
                    held.enter_context(socket.socket(socket.AF_INET, kind)).bind(
                        ("127.0.0.1", port)
                    )
            except OSError:
                continue
            return port


def test_the_admin_commands_share_one_data_folder(tmp_path: Path) -> None:
    env = {"RENDEZVOUS_DATA_DIR": str(served(tmp_path / "data"))}
    token = rendezvous("token", "create", "--uses", "3", env=env)
    assert token.returncode == 0, token.stderr
    assert token.stdout.count("\n") == 1 and token.stdout.startswith("mp2_")

    info = json.loads(rendezvous("info", "--json", env=env).stdout)
    assert {"public_key", "endpoint", "zone", "network", "dns", "api_url"} <= info.keys()
    assert info["network"] == "10.77.0.0/16" and info["zone"] == "mesh.internal."
    assert info["api_url"].startswith("https://") and info["tls_pin"].startswith("sha256:")

    key = KeyPair.generate().public_key
    added = rendezvous("peer", "add", "--public-key", key, "--name", "phone", env=env)
    assert added.stdout.strip() == "10.77.0.2", added.stderr
    [listed] = json.loads(rendezvous("peers", "--json", env=env).stdout)
    assert listed == {
        "name": "phone",
        "public_key": key,
        "address": "10.77.0.2",
        "endpoint": None,
        "last_handshake": None,
        "endpoint_confirmed_at": None,
        "routes": [],
        "relay_partners": [],
        "lan_endpoints": [],
        "pending_routes": [],
    }
    table = rendezvous("peers", env=env).stdout
    assert "phone" in table and "never" in table
    tokens = json.loads(rendezvous("token", "list", "--json", env=env).stdout)
    assert [entry["uses_left"] for entry in tokens] == [3]
    assert rendezvous("token", "revoke", tokens[0]["id"], env=env).returncode == 0
    assert rendezvous("peer", "remove", "phone", env=env).returncode == 0
    assert json.loads(rendezvous("peers", "--json", env=env).stdout) == []


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--bogus"], "unrecognized arguments"),
        (["token", "create", "--uses", "0"], "--uses must be between"),
        (["token", "create", "--uses", "many"], "invalid int value"),
        (["token", "create", "--expires", "soon"], "must look like 90s"),
        (["token", "revoke", "abc"], "no token 'abc'"),
        (["peer", "add", "--public-key", "nope", "--name", "x"], "--public-key must be 44"),
        (["peer", "add", "--public-key", "KEY", "--name", "No Way"], "DNS label"),
        (["peer", "add", "--public-key", "KEY", "--name", "x", "--routes", "1.2.3.4/8"], "did you"),
        (["peer", "remove", "ghost"], "no peer named"),
        (["token", "create", "--allow-routes", "0.0.0.0/0"], "default route"),
        (["token", "create", "--allow-routes", "224.0.0.0/8"], "multicast"),
        (["token", "create", "--label", "two\nlines"], "--label"),
        (["peer", "routes", "approve", "ghost"], "no peer named"),
        (["peer", "routes", "approve", "ghost", "::/0"], "default route"),
        (["peers", "--yaml"], "unrecognized arguments"),
    ],
)
def test_mistakes_cost_one_line_and_exit_2(tmp_path: Path, argv: list[str], words: str) -> None:
    key = KeyPair.generate().public_key
    argv = [key if arg == "KEY" else arg for arg in argv]
    result = rendezvous(*argv, env={"RENDEZVOUS_DATA_DIR": str(served(tmp_path))})
    assert_one_line_error(result, 2, words)


def test_serve_refuses_bad_settings_in_one_line(tmp_path: Path) -> None:
    data = ["--data-dir", str(tmp_path)]
    assert_one_line_error(rendezvous("serve", *data, "--network", "10.0.0.0/33"), 2, "CIDR")
    assert_one_line_error(rendezvous("serve", *data, "--wg-listen", "nowhere"), 2, "HOST:PORT")
    for rate in ("0", "fast", "²", "100001"):
        assert_one_line_error(rendezvous("serve", *data, "--relay-rate", rate), 2, "--relay-rate")
    assert_one_line_error(
        rendezvous("serve", *data, env={"RENDEZVOUS_ZONE": "a..b"}), 2, "not a DNS name"
    )
    for zone in ("bad zone!", "com"):
        assert_one_line_error(rendezvous("serve", *data, "--zone", zone), 2, "two or more labels")
    for network in ("0.0.0.0/0", "8.8.8.0/24", "::/0"):
        assert_one_line_error(rendezvous("serve", *data, "--network", network), 2, "not private")
    blocked = tmp_path / "file"
    blocked.write_text("")
    assert_one_line_error(rendezvous("info", "--data-dir", str(blocked / "sub")), 2, "never served")


def test_admin_commands_on_a_folder_that_never_served_change_nothing(tmp_path: Path) -> None:
    never = tmp_path / "never"
    assert_one_line_error(
        rendezvous("token", "create", "--data-dir", str(never)), 2, "never served"
    )
    assert not never.exists()  # no identity invented for a host that never served


def test_a_serve_that_fails_changes_nothing_token_create_reads(tmp_path: Path) -> None:
    data = served(tmp_path / "data", public_endpoint="192.0.2.10:51820")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        failed = rendezvous(
            "serve",
            "--data-dir",
            str(data),
            "--public-endpoint",
            "198.51.100.99:1",
            "--wg-listen",
            f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}",
            "--api-listen",
            f"127.0.0.1:{busy}",
        )
    assert failed.returncode == 1, failed.stderr
    info = json.loads(rendezvous("info", "--json", "--data-dir", str(data)).stdout)
    assert info["endpoint"] == "192.0.2.10:51820"  # the typo'd endpoint was not kept


def test_a_port_in_use_is_one_line_naming_the_flag(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        free_udp_port = probe.getsockname()[1]
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = rendezvous(
            "serve",
            "--data-dir",
            str(tmp_path),
            "--wg-listen",
            f"127.0.0.1:{free_udp_port}",
            "--api-listen",
            f"127.0.0.1:{port}",
        )
    assert_one_line_error(result, 1, "--api-listen")


def test_health_answers_for_the_serving_rendezvous_only(tmp_path: Path) -> None:
    wg = free_port(socket.SOCK_DGRAM)
    api = free_port(socket.SOCK_STREAM)
    dns_port = free_port(socket.SOCK_DGRAM, socket.SOCK_STREAM)  # DNS takes both: not UDP only
    data = ["--data-dir", str(tmp_path)]
    listen = ["--wg-listen", f"127.0.0.1:{wg}", "--public-endpoint", f"127.0.0.1:{wg}"]
    listen += ["--api-listen", f"0.0.0.0:{api}", "--dns-listen", f"127.0.0.1:{dns_port}"]
    serve = subprocess.Popen(
        [*ENTRY, "serve", *data, *listen],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert serve.stderr is not None and "serving" in serve.stderr.readline()
        healthy = rendezvous("health", *data)
        assert healthy.returncode == 0 and healthy.stdout == "ok: 0 peers\n", healthy
    finally:
        serve.terminate()
        serve.wait(10)
    assert_one_line_error(rendezvous("health", *data), 1, f"127.0.0.1:{api}/healthz")


def test_the_operator_grants_and_revokes_routes(tmp_path: Path) -> None:
    env = {"RENDEZVOUS_DATA_DIR": str(served(tmp_path / "data"))}
    key = KeyPair.generate().public_key
    assert rendezvous("peer", "add", "--public-key", key, "--name", "gw", env=env).returncode == 0
    granted = rendezvous("peer", "routes", "approve", "gw", "192.168.5.0/24", env=env)
    assert granted.returncode == 0, granted.stderr
    assert "gw carries 192.168.5.0/24" in granted.stdout
    [listed] = json.loads(rendezvous("peers", "--json", env=env).stdout)
    assert listed["routes"] == ["192.168.5.0/24"]
    revoked = rendezvous("peer", "routes", "revoke", "gw", "192.168.5.0/24", env=env)
    assert "gw carries none" in revoked.stdout
    allowed = rendezvous(
        "token", "create", "--allow-routes", "192.168.0.0/16", "--label", "office gw", env=env
    )
    assert allowed.returncode == 0, allowed.stderr
    [token] = json.loads(rendezvous("token", "list", "--json", env=env).stdout)
    assert token["allowed_routes"] == ["192.168.0.0/16"] and token["label"] == "office gw"
    # stdout is the token alone (for scripts); stderr names it, for revoking it later
    assert f"token {token['id']} (office gw): 1 use(s)" in allowed.stderr
    assert "office gw" in rendezvous("token", "list", env=env).stdout


def test_a_phone_gets_a_wg_quick_configuration_that_reaches_every_peer_through_the_relay(
    tmp_path: Path,
) -> None:
    env = {"RENDEZVOUS_DATA_DIR": str(served(tmp_path / "data"))}
    keys = [KeyPair.generate().public_key for _ in range(2)]
    for name, key in zip(("laptop", "nas"), keys, strict=True):
        assert (
            rendezvous("peer", "add", "--public-key", key, "--name", name, env=env).returncode == 0
        )
    made = rendezvous("peer", "add", "--name", "phone", "--config", env=env)
    assert made.returncode == 0, made.stderr
    assert "only copy of its private key" in made.stderr and "█" not in made.stdout  # no tty
    sections = made.stdout.split("\n\n")
    interface, rendezvous_peer, *peers = (dict(_settings(section)) for section in sections)
    private = X25519PrivateKey.from_private_bytes(base64.b64decode(interface["PrivateKey"]))
    phone_key = encode_key(public_bytes(private))
    info = json.loads(rendezvous("info", "--json", env=env).stdout)
    assert interface["Address"] == "10.77.0.4/32"
    assert rendezvous_peer["PublicKey"] == info["public_key"]
    assert rendezvous_peer["PersistentKeepalive"] == "10"
    assert [peer["PublicKey"] for peer in peers] == keys
    assert {peer["Endpoint"] for peer in [rendezvous_peer, *peers]} == {info["endpoint"]}
    assert [peer["AllowedIPs"] for peer in peers] == ["10.77.0.2/32", "10.77.0.3/32"]
    listed = {p["name"]: p for p in json.loads(rendezvous("peers", "--json", env=env).stdout)}
    assert listed["phone"]["public_key"] == phone_key
    assert listed["phone"]["relay_partners"] == keys
    table = rendezvous("peers", env=env).stdout
    assert "RELAYED WITH" in table and "laptop,nas" in table

    both = rendezvous("peer", "add", "--name", "tv", "--config", "--public-key", keys[0], env=env)
    assert_one_line_error(both, 2, "--public-key KEY, or --config")


def _settings(section: str) -> list[tuple[str, str]]:
    pairs = (line.split(" = ", 1) for line in section.splitlines() if " = " in line)
    return [(key, value) for key, value in pairs]
