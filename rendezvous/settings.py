"""What a rendezvous is configured with, and where each value comes from.

Precedence, highest first: a flag or its `RENDEZVOUS_*` variable, the value the data folder
stored at the last `serve`, then the embedded default. Storing them is what lets `rendezvous
token create` (run later, with no flags) put the right API URL in a token.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

import dns.exception
import dns.name

from meshpeer.common.endpoints import (
    Endpoint,
    IPAddress,
    IPNetwork,
    format_endpoint,
    parse_host_port,
)
from meshpeer.common.errors import InvalidInput

from .model import parse_mesh_network

DEFAULT_ZONE = "mesh.internal."  # .internal is reserved for private use (ICANN, 2024)
DEFAULT_NETWORK = "10.77.0.0/16"
DEFAULT_WG_LISTEN = "0.0.0.0:51820"
DEFAULT_DNS_LISTEN = "0.0.0.0:53"
DEFAULT_API_LISTEN = "0.0.0.0:51821"
DEFAULT_RELAY_RATE = "100"  # Mbit/s a peer may send through the relay (timers.RELAY_BYTES_PER_S)
MAX_RELAY_RATE = 100_000  # 100 Gbit/s: past any uplink, a typo's guard only
DEFAULT_DNS_TTL = "0"  # as wgsd: an endpoint can move at any keepalive, so never cache it
MAX_DNS_TTL = 86_400
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?|_[a-z0-9-]+")
_WILDCARDS = {"0.0.0.0", "::", ""}  # noqa: S104 (the names of wildcard binds, not a bind)


@dataclass(frozen=True, slots=True)
class Settings:
    zone: str
    network: IPNetwork
    wg_listen: Endpoint
    dns_listen: Endpoint
    api_listen: Endpoint
    public_endpoint: Endpoint
    public_api_url: str
    dns_ttl: int = 0
    tls_cert: str | None = None  # the operator's certificate; None: the data folder's own
    tls_key: str | None = None
    behind_tls_proxy: bool = False  # plain HTTP, for a TLS proxy in front that terminates it
    dns_axfr_allow: tuple[IPNetwork, ...] = ()  # who may transfer the zone: nobody by default
    relay_mbit_s: int = int(DEFAULT_RELAY_RATE)  # what one peer may send through the relay

    @property
    def rendezvous_address(self) -> IPAddress:
        """The rendezvous's own mesh address: the first host of the network."""
        return self.network.network_address + 1

    @property
    def own_addresses(self) -> tuple[IPAddress, ...]:
        """The rendezvous's addresses that no peer's route may take (peers reach it there)."""
        hosts = {self.public_endpoint[0], self.wg_listen[0], self.dns_listen[0], self.api_listen[0]}
        found = [self.rendezvous_address]
        for host in sorted(hosts - _WILDCARDS):
            try:
                found.append(ipaddress.ip_address(host))
            except ValueError:
                continue  # a host name: not an address a route could take
        return tuple(found)

    @property
    def dns_address(self) -> Endpoint:
        return (self.public_endpoint[0], self.dns_listen[1])

    def to_json(self) -> dict[str, object]:
        return {
            "zone": self.zone,
            "network": str(self.network),
            "wg_listen": format_endpoint(self.wg_listen),
            "dns_listen": format_endpoint(self.dns_listen),
            "api_listen": format_endpoint(self.api_listen),
            "public_endpoint": format_endpoint(self.public_endpoint),
            "public_api_url": self.public_api_url,
            "dns_ttl": self.dns_ttl,
            "tls_cert": self.tls_cert,
            "tls_key": self.tls_key,
            "behind_tls_proxy": self.behind_tls_proxy,
            "dns_axfr_allow": [str(network) for network in self.dns_axfr_allow],
            "relay_rate": self.relay_mbit_s,
        }


@dataclass(frozen=True, slots=True)
class Overrides:
    """Values given on the command line or in the environment (None: not given)."""

    zone: str | None = None
    network: str | None = None
    wg_listen: str | None = None
    dns_listen: str | None = None
    api_listen: str | None = None
    public_endpoint: str | None = None
    public_api_url: str | None = None
    dns_ttl: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    behind_tls_proxy: str | None = None
    dns_axfr_allow: str | None = None
    relay_rate: str | None = None


_FIELDS = tuple(field.name for field in fields(Overrides))
# What every instance serving one database must agree on: the mesh's names and addresses, and
# what its DNS and relay promise. The database keeps these; the rest (where this instance
# listens, how it is reached, its TLS files) belongs to its host and stays in its data folder.
MESH_WIDE = ("zone", "network", "dns_ttl", "dns_axfr_allow", "relay_rate")
# Each one's field in Settings, as it is served (the relay rate is parsed into Mbit/s).
SERVED_AS = {name: name for name in MESH_WIDE} | {"relay_rate": "relay_mbit_s"}
PER_INSTANCE = tuple(name for name in _FIELDS if name not in MESH_WIDE)


def resolve(given: Overrides) -> Settings:
    """Fill what was not given with defaults; raise InvalidInput naming the bad value."""
    wg_listen = parse_host_port(given.wg_listen or DEFAULT_WG_LISTEN, "--wg-listen")
    dns_listen = parse_host_port(given.dns_listen or DEFAULT_DNS_LISTEN, "--dns-listen")
    api_listen = parse_host_port(given.api_listen or DEFAULT_API_LISTEN, "--api-listen")
    public_endpoint = (
        parse_host_port(given.public_endpoint, "--public-endpoint")
        if given.public_endpoint
        else (guess_public_host(wg_listen[0]), wg_listen[1])
    )
    api_url = given.public_api_url or "https://" + format_endpoint(
        (public_endpoint[0], api_listen[1])
    )
    behind_proxy = parse_switch(given.behind_tls_proxy, "--behind-tls-proxy")
    _check_tls(given, behind_proxy)
    return Settings(
        zone=parse_zone(given.zone or DEFAULT_ZONE),
        network=parse_mesh_network(given.network or DEFAULT_NETWORK),
        wg_listen=wg_listen,
        dns_listen=dns_listen,
        api_listen=api_listen,
        public_endpoint=public_endpoint,
        public_api_url=parse_api_url(api_url),
        dns_ttl=parse_ttl(given.dns_ttl or DEFAULT_DNS_TTL),
        tls_cert=given.tls_cert,
        tls_key=given.tls_key,
        behind_tls_proxy=behind_proxy,
        dns_axfr_allow=parse_networks(given.dns_axfr_allow or "", "--dns-axfr-allow"),
        relay_mbit_s=parse_relay_rate(given.relay_rate or DEFAULT_RELAY_RATE),
    )


def _check_tls(given: Overrides, behind_proxy: bool) -> None:
    if bool(given.tls_cert) != bool(given.tls_key):
        raise InvalidInput("--tls-cert and --tls-key go together: give both or neither")
    if behind_proxy and given.tls_cert:
        raise InvalidInput("--behind-tls-proxy serves plain HTTP: drop --tls-cert/--tls-key")
    if behind_proxy and not (given.public_api_url or "").startswith("https://"):
        raise InvalidInput(
            "--behind-tls-proxy needs --public-api-url https://... (the proxy's address): "
            "agents never send secrets over plain HTTP"
        )


def parse_networks(text: str, flag: str) -> tuple[IPNetwork, ...]:
    """Comma-separated CIDRs, such as `192.0.2.0/24,2001:db8::/32` (a host is a /32)."""
    networks = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise InvalidInput(f"{flag}: {item!r} is not a CIDR such as 192.0.2.0/24") from None
    return tuple(networks)


def parse_switch(text: str | None, flag: str) -> bool:
    """A yes/no setting from a flag or an environment variable (1/0, true/false, yes/no)."""
    if text is None:
        return False
    value = text.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise InvalidInput(f"{flag} {text!r} must be 1 or 0")


def from_environment(environ: dict[str, str] | None = None) -> Overrides:
    environ = dict(os.environ) if environ is None else environ
    return from_mapping({name: environ.get("RENDEZVOUS_" + name.upper()) for name in _FIELDS})


def from_mapping(values: Mapping[str, str | None]) -> Overrides:
    return Overrides(**{name: values.get(name) or None for name in _FIELDS})


def to_mapping(given: Overrides) -> dict[str, str]:
    return {name: value for name in _FIELDS if (value := getattr(given, name)) is not None}


def only(values: dict[str, str], names: tuple[str, ...]) -> dict[str, str]:
    """The entries of `values` (to_mapping's) named in `names`: MESH_WIDE or PER_INSTANCE."""
    return {name: value for name, value in values.items() if name in names}


def merge(high: Overrides, low: Overrides) -> Overrides:
    """Each value from `high` where it was given, else from `low`."""
    chosen = {
        name: value if (value := getattr(high, name)) is not None else getattr(low, name)
        for name in _FIELDS
    }
    return Overrides(**chosen)


def parse_zone(text: str) -> str:
    try:
        name = dns.name.from_text(text.strip())
    except dns.exception.DNSException as error:
        raise InvalidInput(f"zone {text!r} is not a DNS name ({error})") from None
    labels = [label.decode(errors="replace") for label in name.labels if label]
    if len(labels) < 2 or not all(_LABEL.fullmatch(label) for label in labels):
        raise InvalidInput(
            f"zone {text!r} must be two or more labels of letters, digits and '-' "
            "(such as mesh.internal): peers' names go under it"
        )
    return name.to_text().lower()


def parse_ttl(text: str) -> int:
    if not text.strip().isdigit() or int(text) > MAX_DNS_TTL:
        raise InvalidInput(f"--dns-ttl {text!r} must be whole seconds from 0 to {MAX_DNS_TTL}")
    return int(text)


def parse_relay_rate(text: str) -> int:
    if not text.strip().isascii() or not text.strip().isdigit():
        raise InvalidInput(f"--relay-rate {text!r} must be whole Mbit/s, such as 100")
    rate = int(text)
    if not 1 <= rate <= MAX_RELAY_RATE:
        raise InvalidInput(f"--relay-rate {text!r} must be from 1 to {MAX_RELAY_RATE} Mbit/s")
    return rate


def parse_api_url(text: str) -> str:
    if not text.startswith("https://") or len(text) > 512:
        raise InvalidInput(
            f"API URL {text!r} must start with https:// (agents only speak TLS to the API)"
        )
    return text.rstrip("/")


def guess_public_host(listen_host: str) -> str:
    """With no --public-endpoint: the bound address, or the address of the default route."""
    if listen_host not in _WILDCARDS:
        return listen_host
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        # connect() on a UDP socket only chooses the route and source address; nothing is sent.
        probe.connect(("192.0.2.1", 9))
        host = str(probe.getsockname()[0])
    except OSError:
        raise InvalidInput(
            "this host has no default route to guess its public address from: "
            "give --public-endpoint HOST:PORT (RENDEZVOUS_PUBLIC_ENDPOINT)"
        ) from None
    finally:
        probe.close()
    return host


def default_data_dir(environ: dict[str, str] | None = None) -> Path:
    """One folder shared by every subcommand, so no flag is needed after the first `serve`."""
    environ = dict(os.environ) if environ is None else environ
    if environ.get("RENDEZVOUS_DATA_DIR"):
        return Path(environ["RENDEZVOUS_DATA_DIR"])
    if os.geteuid() == 0:
        return Path("/var/lib/meshpeer-rendezvous")
    base = environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "meshpeer-rendezvous"
