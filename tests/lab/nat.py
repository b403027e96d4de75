"""NAT behaviours of RFC 4787, written as nftables rulesets for a lab router.

Linux conntrack alone is a port-restricted cone only by accident (it preserves ports when it can)
and has no endpoint-independent filtering at all. So each router keeps the NAT's state explicitly,
in nftables maps filled from the packet path, the way a real NAT keeps its mapping table:

- ``eim``      internal ip . port  -> public ip . port (endpoint-independent mapping, 4787 4.1)
- ``inbound``  public port         -> internal ip . port (what unsolicited packets are let in to)
- ``contacts`` public port . remote address that the internal endpoint has sent to
               (address-dependent filtering, RFC 4787 section 5)

Conntrack then does what it is good at: established flows, and address-and-port-dependent
filtering for free. New mappings take a random public port (not the internal one), so nothing
in meshpeer can work by guessing ports. Mappings and filter entries live 120 s after the last
outbound packet (RFC 4787 REQ-5 asks for at least 2 minutes) and are refreshed by outbound
traffic only (REQ-6).

Unsolicited packets to the router itself are dropped in its input chain. If they were not, the
kernel would confirm a conntrack entry for them, and that entry would clash with the mapping a
later outbound packet to the same remote wants, which no real home router does.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass

MAPPING_LIFETIME_S = 120  # RFC 4787 REQ-5: a UDP mapping must not expire in less than 2 minutes


class NatType(enum.Enum):
    """Mapping and filtering behaviour, named after RFC 4787 section 4 and 5."""

    FULL_CONE = "full_cone"  # endpoint-independent mapping and filtering
    ADDRESS_RESTRICTED = "address_restricted"  # EIM, address-dependent filtering
    PORT_RESTRICTED = "port_restricted"  # EIM, address-and-port-dependent filtering
    SYMMETRIC = "symmetric"  # address-and-port-dependent mapping and filtering

    @property
    def endpoint_independent_mapping(self) -> bool:
        return self is not NatType.SYMMETRIC


@dataclass(frozen=True, slots=True)
class NatSpec:
    nat_type: NatType
    public_address: ipaddress.IPv4Address
    lan_network: ipaddress.IPv4Network
    hairpin: bool = False
    wan_if: str = "wan"
    lan_if: str = "lan"


TABLE = "lab_nat"


def ruleset(spec: NatSpec) -> str:
    """The whole nftables ruleset of one NAT router, ready for ``nft -f -``."""
    return "\n".join(
        [
            f"table ip {TABLE} {{",
            *_state(),
            *_prerouting(spec),
            *_postrouting(spec),
            *_record(spec),
            *_filter(spec),
            "}",
            "",
        ]
    )


def _state() -> list[str]:
    timeout = f"flags dynamic,timeout; timeout {MAPPING_LIFETIME_S}s;"
    return [
        f"  map eim {{ type ipv4_addr . inet_service : ipv4_addr . inet_service; {timeout} }}",
        f"  map inbound {{ type inet_service : ipv4_addr . inet_service; {timeout} }}",
        f"  set contacts {{ type inet_service . ipv4_addr; {timeout} }}",
    ]


def _prerouting(spec: NatSpec) -> list[str]:
    public, wan, lan = spec.public_address, spec.wan_if, spec.lan_if
    to_mapping = "dnat ip to udp dport map @inbound"
    rules = []
    if spec.nat_type is NatType.FULL_CONE:
        rules.append(f'iifname "{wan}" ip daddr {public} {to_mapping}')
    elif spec.nat_type is NatType.ADDRESS_RESTRICTED:
        rules.append(
            f'iifname "{wan}" ip daddr {public} udp dport . ip saddr @contacts {to_mapping}'
        )
    # Port-restricted and symmetric filtering is conntrack's own: only replies get in.
    if spec.hairpin:
        # Hairpinned packets are filtered endpoint-independently, as most NATs that hairpin do.
        rules.append(f'iifname "{lan}" ip daddr {public} {to_mapping}')
    return _chain("prerouting", "type nat hook prerouting priority dstnat; policy accept;", rules)


def _postrouting(spec: NatSpec) -> list[str]:
    public, wan, lan = spec.public_address, spec.wan_if, spec.lan_if
    keep_mapping = "meta l4proto udp snat ip to ip saddr . udp sport map @eim"
    new_mapping = f"snat ip to {public} fully-random"
    rules = []
    if spec.nat_type.endpoint_independent_mapping:
        rules.append(f'oifname "{wan}" {keep_mapping}')
    rules.append(f'oifname "{wan}" {new_mapping}')
    if spec.hairpin:
        hairpinned = f'oifname "{lan}" ct status dnat ip saddr {spec.lan_network}'
        if spec.nat_type.endpoint_independent_mapping:
            rules.append(f"{hairpinned} {keep_mapping}")
        rules.append(f"{hairpinned} {new_mapping}")
    return _chain("postrouting", "type nat hook postrouting priority srcnat; policy accept;", rules)


def _record(spec: NatSpec) -> list[str]:
    """After translation, remember every mapping and contact an outbound packet used or renewed.

    An outbound packet of a flow we started is in the original direction (its internal endpoint is
    the original source); one answering a flow let in from outside is in the reply direction.
    """
    internal = {
        "original": "ct original ip saddr . ct original proto-src",
        "reply": "ct reply ip saddr . ct reply proto-src",
    }
    status = {"original": "snat", "reply": "dnat"}
    rules = []
    for direction, endpoint in internal.items():
        outbound = f"ct direction {direction} ct status {status[direction]} meta l4proto udp"
        if spec.nat_type.endpoint_independent_mapping:
            rules.append(f"{outbound} update @eim {{ {endpoint} : ip saddr . udp sport }}")
        rules.append(f"{outbound} update @inbound {{ udp sport : {endpoint} }}")
    rules.append(
        f'oifname "{spec.wan_if}" meta l4proto udp update @contacts {{ udp sport . ip daddr }}'
    )
    return _chain(
        "record", "type filter hook postrouting priority srcnat + 100; policy accept;", rules
    )


def _filter(spec: NatSpec) -> list[str]:
    lan = spec.lan_if
    inbound = _chain(
        "input",
        "type filter hook input priority filter; policy drop;",
        [
            'iifname "lo" accept',
            "ct state established,related accept",
            f'iifname "{lan}" icmp type echo-request accept',
        ],
    )
    forward = _chain(
        "forward",
        "type filter hook forward priority filter; policy drop;",
        [
            "ct state established,related accept",
            f'iifname "{lan}" accept',
            "ct status dnat accept",  # let in by the mapping and filtering rules above
        ],
    )
    return inbound + forward


def _chain(name: str, header: str, rules: list[str]) -> list[str]:
    return [f"  chain {name} {{", f"    {header}", *(f"    {rule}" for rule in rules), "  }"]
