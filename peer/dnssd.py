"""Endpoint hints from the rendezvous's DNS-SD zone, with dnspython's async resolver.

The watch API tells us of changes within 100 ms; this is the slower, independent path (and what
wgsd users already know): PTR for the instances, then SRV per instance, whose additional section
carries the address (and TXT). Plain DNS is unauthenticated, so all it yields is each peer's
endpoint (SRV port, A/AAAA address), and only for keys the API lists (DESIGN.md, "Trust model"):
`name=`, `address=` and `allowed=` are never read for the device: a peer's AllowedIPs are the
mesh core's to decide (Mesh.allowed_ips), from the API's values alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Container, Sequence

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver

from meshpeer.common.endpoints import Endpoint
from meshpeer.dns.instances import BadRecord, decode_instance
from meshpeer.dns.naming import BadLabel, key_from_label

from .timers import DNS_QUERY_TIMEOUT_S

logger = logging.getLogger("meshpeer.peer.dnssd")

# SRV queries in flight at once: a 1,000-peer zone is read in a few round trips, and a poll
# never opens more sockets than this.
PARALLEL_QUERIES = 16
# One 64 KiB answer holds about 900 instance PTRs (tests/test_dns_lab.py); a hostile server can
# pack more short names in, and each would cost an SRV query.
MAX_INSTANCES = 1024


class ZoneUnreadable(Exception):
    """The instance list did not come: no answer, or one dnspython could not take. Its own
    type, so the agent can catch it without importing dnspython before its first read."""


async def discover(
    server: Endpoint, zone: str, listed: Container[bytes]
) -> dict[bytes, list[Endpoint]]:
    """The endpoint the zone publishes for each listed key (as a list, the way the mesh takes
    every source's hints); undecodable records are skipped, a missing instance list raises
    ZoneUnreadable."""
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = [server[0]]
    resolver.port = server[1]
    resolver.lifetime = DNS_QUERY_TIMEOUT_S
    try:
        service = dns.name.from_text(f"_wireguard._udp.{zone}")
        # Over TCP: a mesh of more than a few peers does not fit a UDP answer.
        ptr = await resolver.resolve(service, dns.rdatatype.PTR, tcp=True, raise_on_no_answer=False)
    except dns.exception.DNSException as error:
        raise ZoneUnreadable(str(error) or type(error).__name__) from error
    targets = [rdata.target for rdata in ptr.rrset or []][:MAX_INSTANCES]
    instances = [name for name in targets if _instance_key(name) in listed]
    limit = asyncio.Semaphore(PARALLEL_QUERIES)

    async def one(instance: dns.name.Name) -> tuple[bytes, Endpoint] | None:
        async with limit:
            return await _instance(resolver, instance)

    found = await asyncio.gather(*(one(instance) for instance in instances))
    return {key: [endpoint] for key, endpoint in filter(None, found)}


def _instance_key(instance: dns.name.Name) -> bytes | None:
    try:
        return key_from_label(instance.labels[0]) if instance.labels else None
    except BadLabel:
        return None


async def _instance(
    resolver: dns.asyncresolver.Resolver, instance: dns.name.Name
) -> tuple[bytes, Endpoint] | None:
    try:
        answer = await resolver.resolve(instance, dns.rdatatype.SRV)
    except (dns.exception.DNSException, OSError) as error:
        logger.debug("no SRV for %s: %s", instance, error)
        return None
    srv = next(iter(answer.rrset or []), None)
    extra = {rrset.rdtype: rrset for rrset in answer.response.additional}
    addresses = extra.get(dns.rdatatype.A) or extra.get(dns.rdatatype.AAAA)
    txt = extra.get(dns.rdatatype.TXT)
    if srv is None or not addresses:
        return None
    strings = [text for rdata in txt or [] for text in rdata.strings]
    return endpoint_hint(instance, srv.port, next(iter(addresses)).address, strings)


def endpoint_hint(
    instance: dns.name.Name, port: int, address: str, txt: Sequence[bytes]
) -> tuple[bytes, Endpoint] | None:
    """An instance's key (its label, which `pub=` must match) and endpoint; None when off."""
    try:
        found = decode_instance(instance, port, address, txt)
    except BadRecord:
        return None
    return found.public_key, found.endpoint
