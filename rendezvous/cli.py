"""Command line of the rendezvous (``rendezvous``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rendezvous",
        description=(
            "The meshpeer rendezvous: completes WireGuard handshakes with every registered peer, "
            "records each NAT-mapped endpoint and publishes it as DNS-SD."
        ),
    )
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 with a one-line usage error on bad input
    if args.command is None:
        parser.print_help(sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
