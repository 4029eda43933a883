"""Argument types and the flags several commands share (as argparse parent parsers).

Command modules build their own arguments with these (add_arguments(parser)); cli.py attaches the parents a
command's table entry names. Importing this module loads nothing heavy: building a parser must stay fast.
"""
from __future__ import annotations

import argparse
import math


def positive_int(text: str) -> int:
    """An integer >= 1; accepts 1e6 and 1_000_000 as well as 1000000."""
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value != int(value) or value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return int(value)


def rate(text: str) -> float:
    """A sample rate in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"sample rate {text!r} is not in (0, 1]")
    return value


def list_of(item):
    """A comma-separated list of `item`s (an argparse type)."""
    def parse(text: str) -> list:
        parts = [p.strip() for p in text.split(",")]
        if not all(parts):
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list")
        return [item(p) for p in parts]
    parse.__name__ = f"list of {item.__name__}"  # argparse names the type in its messages
    return parse


def _parent(add) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    add(parser)
    return parser


# --json: machine-readable output instead of the table.
JSON = _parent(lambda p: p.add_argument("--json", action="store_true",
                                        help="print the results as JSON instead of a table"))
