"""RecordIO (train.rec + train.idx) -> one folder per identity holding the raw encoded image bytes.

    partial-fc unpack --include DIR1[,DIR2...] --output OUT [--md5 SUMS]
    python unpack_glint360k.py ...             (the same command)

Reads the insightface layout (record 0 is a header whose label gives the end of the image records) and
plain im2rec output (every record an image), with scalar or vector labels (the first entry is the class).
Bytes are written as stored: no decode, no re-encode, so nothing is lost. Folder names are the class
(8 digits), file names the record key (9 digits), so `partial-fc pack` of the output restores the keys and
classes. With several inputs the class ids of each later dataset are offset past the earlier ones, so
folder names never collide. The RecordIO parsing is records.py (no MXNet needed).

--md5 checks files against known sums before anything is unpacked: `glint360k` (the sums insightface
publishes for Glint360K), a file in `md5sum` format, or NAME=HEX[,NAME=HEX...]. A bare NAME (train.rec)
means that file in every --include folder; a NAME with a folder part is a path. Without --output only the
check runs.
"""
from __future__ import annotations

import hashlib
import os
import re
import sys

import numpy as np
from tqdm import tqdm

from .records import DataError, RecordReader, index_images

# Published with the dataset in deepinsight/insightface, recognition/partial_fc/README.md (section Download).
GLINT360K_MD5 = {"train.rec": "8483be5af6f9906e19f85dee49132f8e", "train.idx": "5d9cd9f262ec87a5ca2eac5e703f7cdf"}
_CHUNK = 4 << 20
_HEX = re.compile(r"[0-9a-fA-F]{32}")


class UnpackError(DataError):
    pass


def _open(folder) -> RecordReader:
    rec, idx = os.path.join(folder, "train.rec"), os.path.join(folder, "train.idx")
    for path in (rec, idx):
        if not os.path.isfile(path):
            raise UnpackError(f"{path}: missing (each --include folder needs train.rec and train.idx)")
    return RecordReader(rec, idx)


def _ext(data: bytes) -> str:
    return ".png" if data[:4] == b"\x89PNG" else ".jpg"


# ---- md5 -------------------------------------------------------------------------------------------------

def parse_md5(spec: str) -> dict[str, str]:
    """{name or path: lower-case hex} from `glint360k`, an md5sum-format file, or NAME=HEX[,NAME=HEX...]."""
    if spec.lower() == "glint360k":
        return dict(GLINT360K_MD5)
    if "=" not in spec:
        return _read_md5_file(spec)
    sums = {}
    for item in (s.strip() for s in spec.split(",")):
        name, _, value = item.partition("=")
        if not name or not _HEX.fullmatch(value.strip()):
            raise UnpackError(f"--md5 {item!r}: expected NAME=32 hex digits (or glint360k, or an md5sum file)")
        sums[name.strip()] = value.strip().lower()
    return sums


def _read_md5_file(path: str) -> dict[str, str]:
    """`md5sum` output: "HEX  name" or "HEX *name" per line."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise UnpackError(f"--md5 {path}: no such file (give a file in md5sum format, NAME=HEX, or "
                          f"glint360k)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UnpackError(f"{path}: cannot read md5 sums ({e})") from None
    sums = {}
    for n, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = re.fullmatch(r"\s*([0-9a-fA-F]{32}) [ *](.+)", line)
        if not m:
            raise UnpackError(f"{path}: line {n} is not 'MD5  name' (md5sum format): {line[:60]!r}")
        sums[m.group(2).strip()] = m.group(1).lower()
    if not sums:
        raise UnpackError(f"{path}: holds no md5 sums")
    return sums


def md5_targets(sums: dict[str, str], includes: list[str]) -> list[tuple[str, str]]:
    """[(path, expected hex)]: bare names in every --include folder, other names as paths."""
    targets = []
    for name, value in sums.items():
        if os.sep in name or (os.altsep and os.altsep in name):
            targets.append((name, value))
        else:
            targets += [(os.path.join(folder, name), value) for folder in includes]
    for path, _ in targets:
        if not os.path.isfile(path):
            raise UnpackError(f"{path}: missing (named by --md5)")
    return targets


def file_md5(path: str, progress=sys.stderr) -> str:
    """Hex md5 of a file, read in chunks of _CHUNK bytes, with a progress bar (bytes) on a terminal."""
    h = hashlib.md5()
    with open(path, "rb") as f, tqdm(total=os.path.getsize(path), desc=f"md5 {path}", unit="B", unit_scale=True,
                                     file=progress, disable=not (progress and progress.isatty())) as bar:
        while True:
            chunk = f.read(_CHUNK)
            if not chunk:
                break
            h.update(chunk)
            bar.update(len(chunk))
    return h.hexdigest()


def check_md5(targets: list[tuple[str, str]], progress=sys.stderr):
    """UnpackError naming the first file whose md5 differs."""
    for path, expected in targets:
        actual = file_md5(path, progress)
        if actual != expected:
            raise UnpackError(f"{path}: md5 mismatch: expected {expected}, got {actual}")


# ---- unpack ----------------------------------------------------------------------------------------------

def _header_classes(reader: RecordReader, layout: str) -> int | None:
    """Identity count given by an insightface header record (labels (a, b): b - a identities), else None."""
    if layout != "insightface":
        return None
    labels = reader.read_image(0)[0].labels
    if labels.size < 2 or labels[1] <= labels[0]:
        return None
    # Above 2^24 float32 rounds both keys (Glint360K): allow the rounding of each.
    slack = int(np.spacing(labels[1])) if labels[1] > 1 << 24 else 0
    return int(labels[1]) - int(labels[0]) + slack


def unpack(includes: list[str], output: str, progress=sys.stderr) -> dict:
    readers = []
    try:
        for folder in includes:  # open every input first: a missing file stops before anything is written
            readers.append(_open(folder))
        os.makedirs(output, exist_ok=True)
        offset, written = 0, 0
        for reader in readers:
            index = index_images(reader)
            keys, labels = index.keys.tolist(), index.labels
            if labels.size and labels.min() < 0:
                i = int(np.argmax(labels < 0))
                raise UnpackError(f"{reader.rec_path}: record key {keys[i]} has negative label {labels[i]}")
            classes = _header_classes(reader, index.layout)
            if classes is not None and labels.size and labels.max() >= classes:
                i = int(np.argmax(labels >= classes))
                raise UnpackError(f"{reader.rec_path}: record key {keys[i]} has label {labels[i]}, beyond the "
                                  f"{classes} identities its header record gives")
            with tqdm(total=len(keys), desc=reader.rec_path, unit="image", file=progress,
                      disable=not (progress and progress.isatty())) as bar:
                for key, label in zip(keys, labels.tolist()):
                    data = reader.read_image(key)[1]
                    d = os.path.join(output, f"{offset + label:08d}")
                    os.makedirs(d, exist_ok=True)
                    with open(os.path.join(d, f"{key:09d}{_ext(data)}"), "wb") as f:
                        f.write(data)
                    written += 1
                    bar.update()
            offset += int(labels.max()) + 1 if labels.size else 0
    finally:
        for reader in readers:
            reader.close()
    return {"images": written, "identities": offset}


DESCRIPTION = ("Unpack RecordIO datasets (insightface or im2rec layout) into one folder per identity holding the "
               "images as stored; --md5 checks the files first. The same as unpack_glint360k.py.")


def run(args) -> int:
    """`partial-fc unpack` (and unpack_glint360k.py, which runs it)."""
    includes = [s for s in args.include.split(",") if s]
    if not includes:
        raise UnpackError("--include names no folder")
    if args.md5:
        targets = md5_targets(parse_md5(args.md5), includes)
        check_md5(targets)
        print(f"md5 OK: {', '.join(path for path, _ in targets)}")
    if not args.output:
        if not args.md5:
            raise UnpackError("give --output (or --md5 to only check the files)")
        return 0
    stats = unpack(includes, args.output)
    print(f"wrote {stats['images']} images of {stats['identities']} identities to {args.output}")
    return 0


def add_arguments(p) -> None:
    p.add_argument("--include", required=True, help="comma-separated folders, each with train.rec and train.idx")
    p.add_argument("--output", help="folder to write one sub-folder per identity into")
    p.add_argument("--md5", metavar="SUMS",
                   help="check md5 sums first: glint360k, an md5sum-format file, or NAME=HEX[,NAME=HEX]")
