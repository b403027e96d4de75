"""A lab router that holds its LAN's connections to the rendezvous's API, both ways, and lets
them through again: an agent whose watch stops answering while WireGuard still flows (a
flaky uplink, a proxy that hangs), which is when it reads DNS-SD and misses new peers."""

from __future__ import annotations

from .netns import run
from .rendezvous import API_PORT
from .topology import Host, Router

_TABLE = "holdapi"


def hold_api(router: Router, rendezvous: Host) -> None:
    out = f'iifname "lan" ip daddr {rendezvous.address} tcp dport {API_PORT} drop'
    back = f'oifname "lan" ip saddr {rendezvous.address} tcp sport {API_PORT} drop'
    ruleset = (
        f"table ip {_TABLE} {{\n  chain forward {{\n"
        "    type filter hook forward priority filter - 10; policy accept;\n"
        f"    {out}\n    {back}\n  }}\n}}\n"
    )
    run(["ip", "netns", "exec", router.ns, "nft", "-f", "-"], stdin=ruleset)


def let_api_through(router: Router) -> None:
    run(["ip", "netns", "exec", router.ns, "nft", "delete", "table", "ip", _TABLE])
