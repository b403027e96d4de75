"""The address allocator alone: next fit over the host range, no store needed."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from meshpeer.common.endpoints import IPAddress
from meshpeer.rendezvous import settings as config
from meshpeer.rendezvous.addresses import AddressAllocator
from meshpeer.rendezvous.model import Conflict, Peer
from tests.test_registry import SMALL


def allocate_all(allocator: AddressAllocator, taken: set[IPAddress], count: int) -> list[str]:
    async def is_taken(address: IPAddress) -> bool:
        return address in taken

    async def allocate() -> list[str]:
        given = []
        for _ in range(count):
            address = await allocator.allocate(is_taken)
            taken.add(address)
            given.append(str(address))
        return given

    return asyncio.run(allocate())


def test_addresses_go_after_the_rendezvous_and_skip_taken_ones() -> None:
    allocator = AddressAllocator(config.resolve(SMALL))
    taken = {ipaddress.ip_address("10.9.0.3")}
    assert allocate_all(allocator, taken, 4) == ["10.9.0.2", "10.9.0.4", "10.9.0.5", "10.9.0.6"]
    with pytest.raises(Conflict, match="is full"):
        allocate_all(allocator, taken, 1)


def test_a_freed_address_comes_back_only_after_the_others() -> None:
    allocator = AddressAllocator(config.resolve(SMALL))
    highest = Peer(b"k" * 32, "a", ipaddress.ip_address("10.9.0.4"))
    allocator.resume_after([highest])  # as after a restart: continue past the highest
    taken = {highest.address}
    assert allocate_all(allocator, taken, 4) == ["10.9.0.5", "10.9.0.6", "10.9.0.2", "10.9.0.3"]
