"""RecordIO (train.rec + train.idx) -> one folder per identity holding the raw encoded image bytes.

Reads the insightface layout (record 0 is a header whose label gives the end of the image records) and
plain im2rec output (every record an image), with scalar or vector labels (the first entry is the class).
Bytes are written as stored: no decode, no re-encode, so nothing is lost. With several inputs the class
ids of each later dataset are offset past the earlier ones, so folder names never collide.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np


class UnpackError(Exception):
    pass


def _open(folder):
    import mxnet as mx
    rec, idx = os.path.join(folder, "train.rec"), os.path.join(folder, "train.idx")
    for path in (rec, idx):
        if not os.path.isfile(path):
            raise UnpackError(f"{path}: missing (each --include folder needs train.rec and train.idx)")
    return mx.recordio.MXIndexedRecordIO(idx, rec, "r"), rec


def _label(header) -> int:
    lab = np.atleast_1d(np.asarray(header.label, dtype=np.float64))
    return int(lab[0])


def image_keys(reader):
    """Keys of the image records: 1 .. end-1 in the insightface layout, every key for plain im2rec."""
    import mxnet as mx
    keys = sorted(reader.keys)
    if not keys or keys[0] != 0:
        return keys  # im2rec keys follow the .lst ids, which need not start at 0; no header then
    header, payload = mx.recordio.unpack(reader.read_idx(0))
    # The insightface header record carries a label vector and no image; an im2rec record with a
    # vector label also has flag > 0, but carries its image bytes.
    if header.flag > 0 and len(payload) == 0:
        return list(range(1, int(np.atleast_1d(header.label)[0])))
    return keys


def _ext(data: bytes) -> str:
    return ".png" if data[:4] == b"\x89PNG" else ".jpg"


def unpack(includes: list[str], output: str, progress=sys.stderr) -> dict:
    import mxnet as mx
    os.makedirs(output, exist_ok=True)
    offset, written, t0 = 0, 0, time.time()
    for folder in includes:
        reader, rec = _open(folder)
        keys, top = image_keys(reader), -1
        for n, key in enumerate(keys):
            try:
                header, data = mx.recordio.unpack(reader.read_idx(key))
            except Exception as e:  # mxnet raises plain errors on a corrupt record
                raise UnpackError(f"{rec}: record {key} is unreadable ({e})") from None
            label = _label(header)
            if label < 0:
                raise UnpackError(f"{rec}: record {key} has negative label {label}")
            top = max(top, label)
            d = os.path.join(output, f"{offset + label:08d}")
            os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, f"{key:09d}{_ext(data)}"), "wb") as f:
                f.write(data)
            written += 1
            if progress and (n % 10000 == 0 or n == len(keys) - 1):
                rate = written / max(time.time() - t0, 1e-9)
                print(f"\r{rec}: {n + 1}/{len(keys)} images ({rate:.0f}/s)", end="", file=progress, flush=True)
        if progress:
            print(file=progress)
        reader.close()
        offset += top + 1
    return {"images": written, "identities": offset}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--include", required=True, help="comma-separated folders, each with train.rec and train.idx")
    p.add_argument("--output", required=True, help="folder to write one sub-folder per identity into")
    a = p.parse_args(argv)
    try:
        stats = unpack([s for s in a.include.split(",") if s], a.output)
    except UnpackError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {stats['images']} images of {stats['identities']} identities to {a.output}")
    return 0
