"""The rendezvous image, built with podman and run with docker/compose.yaml (podman-compose).

There is no Docker engine and no image registry here: `docker/base-image` makes the Debian base
with debootstrap, and the build gets it as BASE_IMAGE. `network_mode: host` means the network
namespace podman is started in, so compose runs under `nsenter --net` into a lab host's
namespace (not `ip netns exec`, whose fresh /sys would hide the cgroup mounts runc needs).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from .topology import Host
from .wait import wait_until

REPO = Path(__file__).resolve().parents[2]
CONF = Path(__file__).with_name("containers.conf")
BASE_IMAGE = "localhost/meshpeer-base:bookworm"
IMAGE = "localhost/meshpeer-rendezvous:latest"  # what compose.yaml's `image:` resolves to
POSTGRES_IMAGE = "localhost/meshpeer-postgres:latest"
HEALTHY_WITHIN_S = 30
PODMAN_COMPOSE = str(Path(sys.executable).with_name("podman-compose"))
HOST_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def podman_env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(CONF), "BASE_IMAGE": BASE_IMAGE}


def podman(*argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *argv],
        env=podman_env(),
        capture_output=True,
        text=True,
        check=check,
        timeout=timeout,
    )


def build_image() -> str:
    """The image from docker/Dockerfile, as a user would build it (pip trusts the host's CA)."""
    pip_trusts_host_ca = ["-v", "/etc/ssl/certs:/etc/ssl/certs:ro"]
    pip_trusts_host_ca += ["--build-arg", f"PIP_CERT={HOST_CA_BUNDLE}"]
    return _build(REPO / "docker" / "Dockerfile", IMAGE, REPO, pip_trusts_host_ca)


def build_postgres_image() -> str:
    """docker/postgres: Debian's PostgreSQL for compose.yaml's profile `postgres`."""
    folder = REPO / "docker" / "postgres"
    return _build(folder / "Dockerfile", POSTGRES_IMAGE, folder, [])


def _build(dockerfile: Path, tag: str, context: Path, options: list[str]) -> str:
    """podman's layer cache makes a build whose inputs did not change take seconds."""
    subprocess.run(["bash", str(REPO / "docker" / "base-image"), BASE_IMAGE], check=True)
    build = [
        "build",
        "--format",
        "docker",  # keeps HEALTHCHECK, which the OCI format drops
        *options,
        "--build-arg",
        f"BASE_IMAGE={BASE_IMAGE}",
        "-f",
        str(dockerfile),
        "-t",
        tag,
        str(context),
    ]
    result = podman(*build, check=False, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return tag


class Compose:
    """docker/compose.yaml brought up in `host`'s network namespace under its own project,
    with the compose profiles `profiles` enabled."""

    def __init__(
        self, host: Host, project: str, env: dict[str, str], profiles: Sequence[str] = ()
    ) -> None:
        self.host = host
        self.project = project
        self.env = env
        self.profiles = [flag for name in profiles for flag in ("--profile", name)]

    def run(
        self, *argv: str, check: bool = True, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        command = [PODMAN_COMPOSE, "-p", self.project, *self.profiles, *argv]
        return self._in_namespace(command, check=check, stdin=stdin)

    def exec(
        self, *argv: str, check: bool = True, service: str = "rendezvous"
    ) -> subprocess.CompletedProcess[str]:
        return self.run("exec", "-T", service, *argv, check=check)

    def podman(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self._in_namespace(["podman", *argv], check=check)

    def start(self) -> None:
        """`up -d`, then wait until the rendezvous's own health check passes."""
        self.run("up", "-d")
        healthy = wait_until(
            lambda: self.exec("rendezvous", "health", check=False).returncode == 0,
            HEALTHY_WITHIN_S,
        )
        logs = self.podman("logs", self.container, check=False)
        assert healthy, logs.stdout + logs.stderr

    @property
    def container(self) -> str:
        return f"{self.project}_rendezvous_1"

    def _in_namespace(
        self, command: Sequence[str], check: bool, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["nsenter", f"--net=/run/netns/{self.host.ns}", *command],
            cwd=REPO / "docker",
            env={**podman_env(), **self.env},
            input=stdin,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(command)}: {result.stdout}{result.stderr}")
        return result
