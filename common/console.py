"""What both command lines share: one-line errors with exit code 2, and logging set-up."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

USAGE_ERROR = 2
FAILURE = 1


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag costs one line (with the way to help), not a usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


class PrintVersion(argparse.Action):
    """--version, as argparse's own prints it, but the version is read only when asked: a
    string built with the parser would read it at every start (see version())."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(
            option_strings,
            dest=argparse.SUPPRESS,
            default=argparse.SUPPRESS,
            nargs=0,
            help="show program's version number and exit",
        )

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> NoReturn:
        print(f"{parser.prog} {version()}")  # on stdout, as argparse's own
        parser.exit()


def version() -> str:
    """meshpeer's version as installed (both commands print it with --version)."""
    # Imported here: importlib.metadata brings email, csv, zipfile and calendar, which would
    # stay resident in the agent for a version it prints only when asked.
    import importlib.metadata

    try:
        return importlib.metadata.version("meshpeer")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def report(prog: str, error: BaseException | str, code: int) -> int:
    print(f"{prog}: error: {error}", file=sys.stderr)
    return code


def configure_logging(level: str) -> None:
    """`level` for our own loggers only. Libraries stay at warnings: at debug, aiosqlite logs
    every SQL parameter (the rendezvous's private key among them) and aiohttp every header."""
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
        stream=sys.stderr,
    )
    logging.getLogger("meshpeer").setLevel(level.upper())


def print_table(rows: list[list[str]]) -> None:
    """Rows in columns as wide as their widest cell, the first row being the header."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip())
