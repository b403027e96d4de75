"""Discovery values are hints: nothing from DNS-SD or mDNS reaches the device but a checked
endpoint of a peer the API lists, and no value of any source can write a line of its own."""

from __future__ import annotations

import pytest

from meshpeer.peer import uapi
from meshpeer.peer.uapi import PeerConfig, UapiError, parse_endpoint
from meshpeer.peer.wireguard import netlink_peer

KEY_A = bytes([1]) * 32
INJECTED = f"\npublic_key={bytes([7] * 32).hex()}\nremove=true"


@pytest.mark.parametrize(
    "peer",
    [
        PeerConfig(KEY_A, (f"10.77.0.2/32{INJECTED}",)),
        PeerConfig(KEY_A, ("10.77.0.2",)),  # a host, not a CIDR
        PeerConfig(KEY_A, ("fe80::%1\nremove=true/64",)),  # ipaddress takes this scope id
        PeerConfig(KEY_A, ("10.77.0.2/32",), (f"203.0.113.7{INJECTED}", 1)),
        PeerConfig(KEY_A, ("10.77.0.2/32",), ("fe80::1%\nremove=true", 1)),
        PeerConfig(KEY_A, ("10.77.0.2/32",), ("rendezvous.example", 51820)),  # not an IP
        PeerConfig(KEY_A, ("10.77.0.2/32",), ("203.0.113.7", 0)),
        PeerConfig(KEY_A, ("10.77.0.2/32",), ("203.0.113.7", 65536)),
        PeerConfig(KEY_A, ("10.77.0.2/32",), None, -1),
        PeerConfig(b"short", ("10.77.0.2/32",)),
    ],
)
def test_the_encoders_refuse_any_value_that_is_not_what_its_line_says(peer: PeerConfig) -> None:
    with pytest.raises(UapiError):
        uapi.set_peers([peer], [])
    with pytest.raises(UapiError):
        netlink_peer(peer)


def test_an_endpoint_with_a_scope_id_is_refused_wherever_it_is_read() -> None:
    for text in ["[fe80::1%\nremove=true]:51820", "[fe80::1%eth0]:51820", "1.2.3.4\n:5"]:
        with pytest.raises(UapiError):
            parse_endpoint(text)
    assert parse_endpoint("[2001:db8::1]:51820") == ("2001:db8::1", 51820)


def test_a_refused_peer_is_a_backend_error_so_the_reconcile_loop_lives_on() -> None:
    import asyncio

    from meshpeer.peer.wireguard import BackendError, KernelBackend, UserspaceBackend

    calls: list[object] = []

    class NoNetlink:
        def __enter__(self) -> NoNetlink:
            return self

        def __exit__(self, *_: object) -> None:
            return None

        def set(self, *args: object, **settings: object) -> None:
            calls.append(settings)

    bad = PeerConfig(KEY_A, (f"10.77.0.2/32{INJECTED}",))
    kernel = KernelBackend(wireguard_factory=NoNetlink)
    with pytest.raises(BackendError):
        asyncio.run(kernel.apply([PeerConfig(bytes([2]) * 32, ("10.77.0.3/32",)), bad], []))
    assert calls == []  # refused before anything was sent
    with pytest.raises(BackendError):
        asyncio.run(UserspaceBackend().apply([bad], []))
