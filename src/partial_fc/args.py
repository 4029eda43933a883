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


def _add_json(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")


def _add_inference(parser) -> None:
    parser.add_argument("--batch-size", type=positive_int, default=32,
                        help="images per forward pass (default: %(default)s; memory grows with it)")
    parser.add_argument("--gpu", type=int, default=None, metavar="ID", help="run on this GPU (default: the CPU)")


# JPEG quality of a re-encode: the default of pack and make-bin, whose libraries take it from here.
JPEG_QUALITY = 95


def _add_resize(parser) -> None:
    # WxH stays a string: the commands parse it, so a bad size is their one-line data error (exit 1).
    parser.add_argument("--resize", metavar="WxH", help="decode, resize and re-encode as JPEG (default: the bytes "
                                                        "as stored)")
    parser.add_argument("--quality", type=int, default=JPEG_QUALITY,
                        help="JPEG quality of --resize (default: %(default)s)")


# --json: machine-readable output instead of the table (verify, ijb, memory-plan, every benchmark).
JSON = _parent(_add_json)
# --batch-size and --gpu: how a model is run over images (verify, ijb).
INFERENCE = _parent(_add_inference)
# --resize and --quality: the optional JPEG re-encode of the image tools (pack, make-bin).
RESIZE = _parent(_add_resize)
