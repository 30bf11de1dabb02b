"""Command line of the mule companion: `mlmule-companion`."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from . import __version__


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, with one sub-command per thing a user does."""
    parser = argparse.ArgumentParser(
        prog="mlmule-companion",
        description=(
            "The ML Mule phone companion: carries model snapshots between the Home Assistant "
            "spaces it visits, trains them on what the phone senses, and never sends raw data."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    parser = build_parser()
    parser.parse_args(argv)
    parser.print_help()
    return 2
