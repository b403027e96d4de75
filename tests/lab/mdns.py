"""Holding a lab host's mDNS back (iptables drops udp/5353 both ways), and letting it through:
how the LAN upgrade's test and benchmark make a pair start on its public path."""

from __future__ import annotations

from .topology import Host

_MDNS = ["-p", "udp", "--dport", "5353", "-j", "DROP"]


def hold_mdns(host: Host, hold: bool) -> None:
    action = "-A" if hold else "-D"
    for chain in ("INPUT", "OUTPUT"):
        host.run(["iptables", action, chain, *_MDNS])
