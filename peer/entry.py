"""The `meshpeer` command's entry point: before anything else is imported, Ctrl-C ends the
process quietly (its default action) instead of raising KeyboardInterrupt wherever the import
happens to be; `run` installs its own handlers once it has something to take down."""

from __future__ import annotations

import signal
import sys


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    from .cli import main as cli_main

    sys.exit(cli_main())
