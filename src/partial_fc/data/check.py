"""`partial-fc check-data DIR`: verify a RecordIO face dataset end to end before training on it.

    partial-fc check-data /data/glint360k [--md5 glint360k] [--threads 8] [--json]

Everything the trainer would meet during a run, found in one pass instead of days into it:

    files       train.rec and train.idx present and regular; --md5 sums (as `unpack --md5` takes them)
    records     every record the idx names: its part headers (magic, continuation flags, length), and the
                records tiling the .rec in offset order (each ends where the next begins, the last at the
                file's end: nothing cut, overlapping or unindexed between them)
    labels      every image record's header and label: an integer class in [0, num_classes)
    identities  insightface layout: the header record's ranges, each identity record's (start, end) tiling
                the image keys in order, identity j's images all labelled j, and as many identities as the
                property file's class count (and its image count, when it has one)
    images      every image decodes, at the property file's size (decoded on --threads threads)

Problems are counted per kind; the first few of each are listed. The summary goes to stdout; a dataset with
any problem ends with one line on stderr and exit status 1.
"""
from __future__ import annotations

import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from tqdm import tqdm

from ..args import positive_int
from .loader import _decode, _read_property
from .records import DataError, RecordReader, _exact_boundary, unpack_image
from .unpack import file_md5, md5_targets, parse_md5

SHOWN_PER_KIND = 5        # problems listed per kind; the rest are counted
_BATCH = 256              # records read, then decoded in parallel, per batch


class Problems:
    """Counts of problems by kind, with the first few messages of each."""

    def __init__(self):
        self.count: dict[str, int] = {}
        self.examples: dict[str, list[str]] = {}

    def add(self, kind: str, message: str) -> None:
        self.count[kind] = self.count.get(kind, 0) + 1
        shown = self.examples.setdefault(kind, [])
        if len(shown) < SHOWN_PER_KIND:
            shown.append(message)

    @property
    def total(self) -> int:
        return sum(self.count.values())


def check(folder: str, *, md5: str | None = None, threads: int = 1, progress=True) -> dict:
    """The summary of checking `folder` (see the module docstring). Raises DataError only when the dataset
    cannot be read at all (a missing file, an unparsable idx); every other problem is counted in it.
    progress: a stream for the progress bars (shown on a terminal), True for stderr, None for none."""
    progress = sys.stderr if progress is True else progress
    rec, idx, prop_path = (os.path.join(folder, n) for n in ("train.rec", "train.idx", "property"))
    for path in (rec, idx):
        if not os.path.exists(path):
            raise DataError(f"{path}: missing")
        if not os.path.isfile(path):
            raise DataError(f"{path}: not a regular file")
    problems = Problems()
    summary = {"folder": folder}
    if md5:
        for path, expected in md5_targets(parse_md5(md5), [folder]):
            actual = file_md5(path, progress)
            if actual != expected:
                problems.add("md5", f"{path}: md5 mismatch: expected {expected}, got {actual}")
        summary["md5"] = "mismatch" if problems.count.get("md5") else "ok"
    prop = None
    if os.path.exists(prop_path):
        try:
            prop = _read_property(prop_path)
        except DataError as e:
            problems.add("property", str(e))
    reader = _open(rec, idx, problems)
    if reader is None:
        return _finish(summary, problems)
    with reader:
        layout = _layout(reader, problems)
        num_classes = prop[0] if prop else None
        summary.update(records=len(reader), bytes=reader.size, layout=layout)
        ident = _identities(reader, layout, problems) if layout == "insightface" else None
        images, labels, decoded = _scan(reader, ident, num_classes, prop[1] if prop else None, threads, problems,
                                        progress)
    summary.update(images=images, decoded=decoded,
                   classes_seen=int(np.unique(labels).size) if labels.size else 0, num_classes=num_classes)
    if ident is not None:
        summary["identities"] = ident["count"]
        if num_classes is not None and ident["count"] != num_classes:
            problems.add("identities", f"{prop_path}: says {num_classes} classes, but {rec} holds "
                                       f"{ident['count']} identity records")
    if prop and prop[2] is not None and prop[2] != images:
        problems.add("property", f"{prop_path}: line 2 says {prop[2]} images, but {rec} holds {images}")
    if prop is None:
        summary["note"] = "no property file: the trainer takes the class count from the labels (max + 1)"
    return _finish(summary, problems)


def _open(rec, idx, problems) -> RecordReader | None:
    """The reader, or None when the idx is unusable. A last record cut short (or bytes after it) is counted
    and the reader opened without that start-up check, so every other record is still verified."""
    try:
        return RecordReader(rec, idx)
    except DataError as e:
        if "truncated record" not in str(e) and "trailing bytes" not in str(e):
            problems.add("index", str(e))
            return None
        problems.add("records", str(e))
    return RecordReader(rec, idx, check_end=False)


def _layout(reader, problems) -> str:
    """"insightface" when key 0 is a header record (labels, no image), else "im2rec" (as index_images decides,
    without reading every header: the scan does that)."""
    if reader.keys[0] != 0:
        return "im2rec"
    try:
        header, image = reader.read_image(0)
    except DataError as e:  # an unreadable key 0: scan every key as an image
        problems.add("identities", str(e))
        return "im2rec"
    return "insightface" if header.flag > 0 and not image else "im2rec"


def _identities(reader, layout, problems) -> dict | None:
    """Identity ranges from an insightface layout's records: {"count", "class_of": key -> ordinal (array)}."""
    header = reader.read_image(0)[0]
    a = int(header.labels[0])
    if a > 1 << 24:  # float32 labels round keys above 2^24 (Glint360K): find the first identity record
        a = _exact_boundary(reader, a)
    # The identity records are the keys from a on; the header's end b is rounded like a above 2^24.
    ident_keys = reader.keys[reader.keys >= a]
    b = a + ident_keys.size
    if not np.array_equal(ident_keys, np.arange(a, b)):
        problems.add("identities", f"{reader.idx_path}: the identity records' keys from {a} are not consecutive")
    said = int(header.labels[1]) if header.labels.size > 1 else a
    if abs(said - b) > (int(np.spacing(np.float32(said))) if said > 1 << 24 else 0):
        problems.add("identities", f"{reader.rec_path}: the header record says identity records end at key {said}, "
                                   f"the idx holds them up to key {b - 1}")
    class_of = np.full(a, -1, dtype=np.int64)  # indexed by image key (1 .. a-1)
    expect = 1
    for ordinal, key in enumerate(range(a, b)):
        try:
            rec, image = reader.read_image(key)
        except DataError as e:
            problems.add("identities", str(e))
            continue
        lo, hi = int(rec.labels[0]), int(rec.labels[-1])
        if rec.flag < 2 or image or not (1 <= lo < hi <= a):
            problems.add("identities", f"{reader.rec_path}: identity record key {key} holds ({lo}, {hi}), not a "
                                       f"range of image keys within 1..{a - 1}")
            continue
        if lo != expect:
            problems.add("identities", f"{reader.rec_path}: identity record key {key} starts at image key {lo}, "
                                       f"the previous identity ended at {expect}")
        class_of[lo:hi] = ordinal
        expect = hi
    if expect != a:
        problems.add("identities", f"{reader.rec_path}: the identity records cover image keys 1..{expect - 1}, the "
                                   f"header record says images are keys 1..{a - 1}")
    return {"count": b - a, "class_of": class_of, "skip": set(range(a, b)) | {0}}


def _scan(reader, ident, num_classes, size, threads, problems, progress):
    """Every record in offset order: (image count, the valid labels int64, images decoded)."""
    order = np.argsort(reader.offsets, kind="stable")
    keys, offsets = reader.keys[order], reader.offsets[order]
    nexts = np.append(offsets[1:], reader.size)
    labels, n_labels, images, decoded = np.empty(len(keys), dtype=np.int64), 0, 0, 0
    skip = ident["skip"] if ident else set()
    with ThreadPoolExecutor(threads) as pool, \
            tqdm(total=len(keys), desc=f"check {reader.rec_path}", unit="record", file=progress,
                 disable=not (progress and progress.isatty())) as bar:
        for lo in range(0, len(keys), _BATCH):
            batch = []
            for key, offset, nxt in zip(keys[lo:lo + _BATCH].tolist(), offsets[lo:lo + _BATCH].tolist(),
                                        nexts[lo:lo + _BATCH].tolist()):
                record = _read(reader, key, offset, nxt, problems)
                if key in skip:  # the header and identity records (checked by _identities)
                    continue
                images += 1
                if record is None:
                    continue
                try:
                    header, image = unpack_image(record)
                except ValueError as e:
                    problems.add("labels", f"{reader.rec_path}: record key {key} is not an image record ({e})")
                    continue
                label = _label(reader, key, header, ident, num_classes, problems)
                if label is not None:
                    labels[n_labels] = label
                    n_labels += 1
                batch.append((key, image))
            for key, why in zip((k for k, _ in batch), pool.map(lambda item: _image_problem(item[1], size), batch)):
                if why:
                    problems.add("images", f"{reader.rec_path}: record key {key}: {why}")
                else:
                    decoded += 1
            bar.update(min(_BATCH, len(keys) - lo))
    return images, labels[:n_labels], decoded


def _read(reader, key, offset, nxt, problems) -> bytes | None:
    """The record at `offset`, if its parts are well formed and it ends where the next record begins."""
    try:
        record = reader.read_at(offset, min(max(nxt - offset, 8), 1 << 22), key)
        end = offset + 8 + (len(record) + 3 & ~3)
        if end != nxt:  # more than one part, or a gap or overlap: ask the part headers
            end = reader.record_end(offset, key)
    except DataError as e:
        problems.add("records", str(e))
        return None
    if end != nxt:
        what = "the next record" if nxt < reader.size else "the end of the file"
        problems.add("records", f"{reader.rec_path}: record key {key} ends at byte {end}, {what} is at {nxt} "
                                f"({'overlapping' if end > nxt else 'unindexed bytes between them'})")
    return record


def _label(reader, key, header, ident, num_classes, problems) -> int | None:
    value = header.label
    if not np.isfinite(value) or value != int(value):
        problems.add("labels", f"{reader.rec_path}: record key {key} has label {value}, not an integer class id")
        return None
    label = int(value)
    if label < 0 or (num_classes is not None and label >= num_classes):
        why = "negative" if label < 0 else f"not below num_classes={num_classes} (property)"
        problems.add("labels", f"{reader.rec_path}: record key {key} has label {label}, which is {why}")
    if ident is not None:
        if not 0 < key < ident["class_of"].size or ident["class_of"][key] < 0:
            problems.add("identities", f"{reader.rec_path}: image record key {key} is in no identity's range")
        elif np.float32(ident["class_of"][key]) != np.float32(value):  # float32 labels above 2^24 round
            problems.add("identities", f"{reader.rec_path}: record key {key} has label {label}, but lies in the "
                                       f"range of identity {ident['class_of'][key]}")
        else:
            label = int(ident["class_of"][key])
    return label


def _image_problem(image: bytes, size) -> str | None:
    decoded = _decode(image)
    if decoded is None:
        return "does not decode as an image"
    if size is not None and tuple(decoded.shape[:2]) != tuple(size):
        return f"is {decoded.shape[0]}x{decoded.shape[1]}, the property file says {size[0]}x{size[1]}"
    return None


def _finish(summary, problems) -> dict:
    summary["problems"] = dict(problems.count)
    summary["examples"] = problems.examples
    return summary


def _table(summary) -> str:
    lines = [f"checked {summary['folder']}"]
    for key in ("md5", "layout", "records", "bytes", "images", "decoded", "identities", "num_classes",
                "classes_seen", "note"):
        if summary.get(key) is not None:
            lines.append(f"  {key:<13}{summary[key]}")
    if summary["problems"]:
        lines.append("  problems:")
        for kind, n in summary["problems"].items():
            lines.append(f"    {kind:<11}{n}")
            lines += [f"      {m}" for m in summary["examples"][kind]]
            if n > len(summary["examples"][kind]):
                lines.append(f"      ... and {n - len(summary['examples'][kind])} more")
    else:
        lines.append("  problems:    none")
    return "\n".join(lines)


DESCRIPTION = ("Check a RecordIO face dataset end to end (train.rec, train.idx, property): every record's header "
               "and length, labels in range, identity records against the property file, every image decoding at "
               "its size, and optionally md5 sums. Exits 1 when anything is wrong.")


def add_arguments(p) -> None:
    p.add_argument("folder", metavar="DIR", help="folder holding train.rec, train.idx and property")
    p.add_argument("--md5", metavar="SUMS",
                   help="also check md5 sums: glint360k, an md5sum-format file, or NAME=HEX[,NAME=HEX]")
    p.add_argument("--threads", type=positive_int, default=os.cpu_count() or 1,
                   help="image decode threads (default: the core count, %(default)s)")


def run(args) -> int:
    summary = check(args.folder, md5=args.md5, threads=args.threads)
    print(json.dumps(summary, indent=1) if args.json else _table(summary))
    if summary["problems"]:
        kinds = ", ".join(f"{n} {kind}" for kind, n in summary["problems"].items())
        raise DataError(f"{args.folder}: {sum(summary['problems'].values())} problem(s) found ({kinds}); the "
                        f"first of each are listed above")
    return 0
