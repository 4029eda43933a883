"""A pairs list + images -> a verification `.bin` (the format of lfw.bin, cfp_fp.bin, agedb_30.bin).

    partial-fc make-bin --pairs pairs.txt --root DIR --output lfw.bin [--format auto|lfw|list] [--resize WxH]
    partial-fc make-bin --check X.bin

Two pair-list formats (auto-detected: a first line of one or two integers means lfw):

* lfw (LFW's pairs.txt): a first line "folds pairs_per_fold" (or one number), then "name i j" for a
  same-identity pair and "name1 i name2 j" for a different-identity pair; image i of name is
  ROOT/name/name_%04d.jpg.
* list: "path1 path2 same" per line (whitespace- or tab-separated, paths relative to ROOT; same is
  1/0, true/false, yes/no).

The `.bin` is a pickle (protocol 4) of (list of encoded image bytes, list of bool issame), two images per
pair. Images are stored as their file bytes, each checked to decode; --resize decodes, resizes and
re-encodes as JPEG. The summary counts distinct images by content (byte-identical files are one image),
not by path. The file is written under a temporary name and renamed into place, then loaded back through
bins.load_pairs, the loader that never executes code from a `.bin`. --check runs only that loader (and
the decode check) on an existing `.bin`, which may also hold its images as uint8 arrays (bins.py).
"""
from __future__ import annotations

import os
import pickle
import sys

import cv2
import numpy as np
from tqdm import tqdm

from .. import atomic
from .bins import BinError, load_pairs
from .pack import DEFAULT_QUALITY, _parse_size, reencode

_TRUE, _FALSE = {"1", "true", "yes", "same"}, {"0", "false", "no", "diff", "different"}


class PairsError(BinError):
    """A pairs list or image that cannot make a .bin: one line naming the file and the problem."""


def _lines(path: str) -> list[str]:
    try:
        with open(path) as f:
            return f.read().splitlines()
    except FileNotFoundError:
        raise PairsError(f"{path}: missing") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PairsError(f"{path}: cannot read ({e})") from None


def _split(line: str) -> list[str]:
    return line.split("\t") if "\t" in line else line.split()


def detect_format(lines: list[str]) -> str:
    """"lfw" when the first non-blank line is one or two integers, else "list"."""
    for line in lines:
        if line.strip():
            fields = line.split()
            return "lfw" if len(fields) in (1, 2) and all(f.isdigit() for f in fields) else "list"
    return "list"


def parse_lfw(lines: list[str], root: str, path: str = "pairs") -> list[tuple[str, str, bool]]:
    """[(image path 1, image path 2, same)] from LFW pairs.txt lines."""
    lfw = lambda name, i: os.path.join(root, name, f"{name}_{int(i):04d}.jpg")  # noqa: E731
    pairs = []
    body = [(n, line) for n, line in enumerate(lines, 1) if line.strip()][1:]  # the first line is the header
    for n, line in body:
        f = line.split()
        try:
            if len(f) == 3:
                pairs.append((lfw(f[0], f[1]), lfw(f[0], f[2]), True))
            elif len(f) == 4:
                pairs.append((lfw(f[0], f[1]), lfw(f[2], f[3]), False))
            else:
                raise ValueError
        except ValueError:
            raise PairsError(f"{path}: line {n} is neither 'name i j' nor 'name1 i name2 j': {line[:60]!r}") from None
    return pairs


def parse_list(lines: list[str], root: str, path: str = "pairs") -> list[tuple[str, str, bool]]:
    """[(image path 1, image path 2, same)] from "path1 path2 same" lines."""
    pairs = []
    for n, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        f = [x.strip() for x in _split(line)]
        same = f[2].lower() if len(f) == 3 else ""
        if same not in _TRUE | _FALSE:
            raise PairsError(f"{path}: line {n} is not 'path1 path2 same' (same = 1/0): {line[:60]!r}")
        pairs.append((os.path.join(root, f[0]), os.path.join(root, f[1]), same in _TRUE))
    return pairs


def read_pairs(path: str, root: str, fmt: str = "auto") -> list[tuple[str, str, bool]]:
    lines = _lines(path)
    fmt = detect_format(lines) if fmt == "auto" else fmt
    pairs = (parse_lfw if fmt == "lfw" else parse_list)(lines, root, path)
    if not pairs:
        raise PairsError(f"{path}: no pairs")
    return pairs


def _image(path: str, resize, quality: int) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise PairsError(f"{path}: missing image") from None
    except OSError as e:
        raise PairsError(f"{path}: cannot read image ({e.strerror})") from None
    if resize:
        return reencode(data, path, resize, quality)
    if cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR) is None:
        raise PairsError(f"{path}: not a decodable image")
    return data


def make_bin(pairs: list[tuple[str, str, bool]], output: str, resize=None, quality: int = DEFAULT_QUALITY,
             progress=sys.stderr) -> dict:
    """Write the .bin; an image used by several pairs is read once. Returns counts; "images" counts distinct
    contents (byte-identical files, e.g. the same photo under two names, are one image)."""
    cache: dict[str, bytes] = {}
    # One bytes object per distinct content: pickle then stores a repeated image once and refers back to it.
    by_content: dict[bytes, bytes] = {}
    images, issame = [], []
    with tqdm(total=len(pairs), desc="make-bin", unit="pair", file=progress,
              disable=not (progress and progress.isatty())) as bar:
        for a, b, same in pairs:
            for path in (a, b):
                if path not in cache:
                    data = _image(path, resize, quality)
                    cache[path] = by_content.setdefault(data, data)
                images.append(cache[path])
            issame.append(bool(same))
            bar.update()
    atomic.write_bytes(output, pickle.dumps((images, issame), protocol=4))
    check(output)
    return {"pairs": len(issame), "same": sum(issame), "images": len(by_content), "bytes": os.path.getsize(output)}


def check(path: str) -> dict:
    """Load a .bin through the restricted loader and decode every image; BinError on any problem."""
    images, issame = load_pairs(path)
    for i, data in enumerate(images):
        if cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR) is None:
            raise BinError(f"{path}: image {i} (pair {i // 2}) does not decode")
    return {"pairs": int(issame.size), "same": int(issame.sum())}


DESCRIPTION = ("Write a verification .bin (pickle of image bytes and issame) from LFW pairs.txt or 'path1 path2 "
               "same' lines; --check loads a .bin safely.")


def run(args) -> int:
    """`partial-fc make-bin`."""
    if args.check:
        if args.pairs or args.output:
            raise PairsError("--check takes only the .bin to check")
        s = check(args.check)
        print(f"{args.check}: {s['pairs']} pairs ({s['same']} same identity), every image decodes")
        return 0
    if not (args.pairs and args.output):
        raise PairsError("give --pairs and --output (or --check X.bin)")
    root = args.root if args.root is not None else os.path.dirname(os.path.abspath(args.pairs))
    resize = _parse_size(args.resize) if args.resize else None
    s = make_bin(read_pairs(args.pairs, root, args.format), args.output, resize, args.quality)
    print(f"wrote {args.output}: {s['pairs']} pairs ({s['same']} same identity), {s['images']} distinct images, "
          f"{s['bytes'] / 1e6:.1f} MB")
    return 0


def add_arguments(p) -> None:
    p.add_argument("--pairs", help="pairs list: LFW pairs.txt or 'path1 path2 same' lines")
    p.add_argument("--root", help="folder the image names are relative to (default: the pairs file's folder)")
    p.add_argument("--output", help="the .bin to write")
    p.add_argument("--format", choices=("auto", "lfw", "list"), default="auto",
                   help="pairs list format; auto: lfw when the first line is one or two integers, else list "
                        "(default: %(default)s)")
    p.add_argument("--check", metavar="BIN", help="only check an existing .bin: loads safely, images decode")
    # --resize and --quality come from the table's parent args.RESIZE.
