"""The other peers from the rendezvous's DNS-SD zone, with dnspython's async resolver.

The watch API tells us of changes within 100 ms; this is the slower, independent path (and what
wgsd users already know): PTR for the instances, then SRV per instance, whose additional section
carries the address and TXT (`pub=`, `allowed=`, `name=`, `address=`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver

from meshpeer.dns.records import BadRecord, decode_instance

from .mesh import RemotePeer

logger = logging.getLogger("meshpeer.peer.dnssd")

QUERY_TIMEOUT_S = 3.0
PARALLEL_QUERIES = 16


async def discover(server: tuple[str, int], zone: str) -> list[RemotePeer]:
    """Every peer the zone publishes; peers whose records do not decode are skipped."""
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = [server[0]]
    resolver.port = server[1]
    resolver.lifetime = QUERY_TIMEOUT_S
    service = dns.name.from_text(f"_wireguard._udp.{zone}")
    # Over TCP: a mesh of more than a few peers does not fit a UDP answer.
    ptr = await resolver.resolve(service, dns.rdatatype.PTR, tcp=True, raise_on_no_answer=False)
    instances = [rdata.target for rdata in ptr.rrset or []]
    limit = asyncio.Semaphore(PARALLEL_QUERIES)

    async def one(instance: dns.name.Name) -> RemotePeer | None:
        async with limit:
            return await _instance(resolver, instance)

    found = await asyncio.gather(*(one(instance) for instance in instances))
    return [peer for peer in found if peer is not None]


async def _instance(
    resolver: dns.asyncresolver.Resolver, instance: dns.name.Name
) -> RemotePeer | None:
    try:
        answer = await resolver.resolve(instance, dns.rdatatype.SRV)
    except (dns.exception.DNSException, OSError) as error:
        logger.debug("no SRV for %s: %s", instance, error)
        return None
    srv = next(iter(answer.rrset or []), None)
    extra = {rrset.rdtype: rrset for rrset in answer.response.additional}
    addresses = extra.get(dns.rdatatype.A) or extra.get(dns.rdatatype.AAAA)
    txt = extra.get(dns.rdatatype.TXT)
    if srv is None or not addresses or not txt:
        return None
    strings = [text for rdata in txt for text in rdata.strings]
    try:
        found = decode_instance(instance, srv.port, next(iter(addresses)).address, strings)
        mesh_address = str(ipaddress.ip_address(found.address or ""))
    except (BadRecord, ValueError):
        return None
    host_route = f"{mesh_address}/{ipaddress.ip_address(mesh_address).max_prefixlen}"
    routes = tuple(cidr for cidr in found.allowed if cidr != host_route)
    return RemotePeer(found.public_key, found.name or "", mesh_address, routes, found.endpoint)
