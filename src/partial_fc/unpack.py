"""RecordIO (train.rec + train.idx) -> one folder per identity holding the raw encoded image bytes.

Reads the insightface layout (record 0 is a header whose label gives the end of the image records) and
plain im2rec output (every record an image), with scalar or vector labels (the first entry is the class).
Bytes are written as stored: no decode, no re-encode, so nothing is lost. With several inputs the class
ids of each later dataset are offset past the earlier ones, so folder names never collide. The RecordIO
parsing is records.py (no MXNet needed).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from .records import DataError, RecordReader, index_images


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


def unpack(includes: list[str], output: str, progress=sys.stderr) -> dict:
    os.makedirs(output, exist_ok=True)
    offset, written, t0 = 0, 0, time.time()
    for folder in includes:
        with _open(folder) as reader:
            index = index_images(reader)
            keys, labels = index.keys.tolist(), index.labels
            if labels.size and labels.min() < 0:
                i = int(np.argmax(labels < 0))
                raise UnpackError(f"{reader.rec_path}: record {keys[i]} has negative label {labels[i]}")
            for n, (key, label) in enumerate(zip(keys, labels.tolist())):
                data = reader.read_image(key)[1]
                d = os.path.join(output, f"{offset + label:08d}")
                os.makedirs(d, exist_ok=True)
                with open(os.path.join(d, f"{key:09d}{_ext(data)}"), "wb") as f:
                    f.write(data)
                written += 1
                if progress and (n % 10000 == 0 or n == len(keys) - 1):
                    rate = written / max(time.time() - t0, 1e-9)
                    print(f"\r{reader.rec_path}: {n + 1}/{len(keys)} images ({rate:.0f}/s)", end="", file=progress,
                          flush=True)
            if progress:
                print(file=progress)
            offset += int(labels.max()) + 1 if labels.size else 0
    return {"images": written, "identities": offset}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--include", required=True, help="comma-separated folders, each with train.rec and train.idx")
    p.add_argument("--output", required=True, help="folder to write one sub-folder per identity into")
    a = p.parse_args(argv)
    try:
        stats = unpack([s for s in a.include.split(",") if s], a.output)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {stats['images']} images of {stats['identities']} identities to {a.output}")
    return 0
