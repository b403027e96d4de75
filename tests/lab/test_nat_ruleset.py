"""The NAT rulesets, read as text: each type has exactly the rules its RFC 4787 behaviour needs."""

from __future__ import annotations

import ipaddress

import pytest

from tests.lab.nat import NatSpec, NatType, ruleset

PUBLIC = ipaddress.IPv4Address("203.0.113.9")
LAN = ipaddress.IPv4Network("192.168.1.0/24")


def rules(nat_type: NatType, hairpin: bool = False) -> str:
    return ruleset(NatSpec(nat_type, PUBLIC, LAN, hairpin=hairpin))


@pytest.mark.parametrize("nat_type", list(NatType), ids=lambda t: t.value)
def test_only_endpoint_independent_nats_reuse_mappings(nat_type: NatType) -> None:
    reuses = "snat ip to ip saddr . udp sport map @eim" in rules(nat_type)
    assert reuses is (nat_type is not NatType.SYMMETRIC)
    assert f"snat ip to {PUBLIC} fully-random" in rules(nat_type)


def test_inbound_filtering_per_type() -> None:
    wan_in = 'iifname "wan" ip daddr 203.0.113.9'
    assert f"{wan_in} dnat ip to udp dport map @inbound" in rules(NatType.FULL_CONE)
    assert f"{wan_in} udp dport . ip saddr @contacts dnat" in rules(NatType.ADDRESS_RESTRICTED)
    for closed in (NatType.PORT_RESTRICTED, NatType.SYMMETRIC):
        assert wan_in not in rules(closed), "only conntrack replies may enter"


def test_hairpin_rules_only_when_asked() -> None:
    assert 'iifname "lan" ip daddr 203.0.113.9' in rules(NatType.PORT_RESTRICTED, hairpin=True)
    assert 'iifname "lan" ip daddr' not in rules(NatType.PORT_RESTRICTED)
    assert 'oifname "lan" ct status dnat' not in rules(NatType.PORT_RESTRICTED)


def test_the_router_drops_what_is_addressed_to_itself() -> None:
    assert "type filter hook input priority filter; policy drop;" in rules(NatType.FULL_CONE)
