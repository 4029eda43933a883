"""Image folders (one per identity) or an image list -> train.rec/train.idx/property.

    partial-fc pack --input FOLDER --output DIR [--shuffle --seed S] [--resize WxH --quality Q] [--layout L]
    partial-fc pack --lst FILE [--root DIR] [--lst-format auto|im2rec|path-label] --output DIR ...

Class ids: with --input, the sub-folders in order (by number when every name is a decimal integer, as
`partial-fc unpack` writes them, else by name) get ids 0, 1, 2, ...; the images of a folder are taken in
file-name order. With --lst, paths relative to --root (default the list's folder), either im2rec's
`index<TAB>label[<TAB>label...]<TAB>path` (the class is the first label) or `path<TAB>label` (what many face
datasets and insightface's Paddle tools ship); auto-detected from the first entry, or set with --lst-format.
The class must be an integer >= 0; images keep the list's order within their class.

--layout (records.FaceRecWriter has the details):
* insightface (default): the bytes insightface's dataset tool (src/data/dataset_merge.py) writes: images on
  keys 1 .., identity records after them (id = key), the header on key 0 last in the file. `property` is
  "num_classes,height,width". Packing what `partial-fc unpack` wrote from such a rec (scalar labels) gives
  its train.rec and train.idx back byte for byte.
* recbuilder: the bytes insightface 0.7.3's RecBuilder writes: images on keys 0 .. n-1 and nothing else;
  `property` has the image count on a second line, as RecBuilder writes it.
Both are read by insightface's readers (FaceImageIter, MXFaceDataset), by `partial-fc train` and `unpack`.

Images pass through as stored (no decode, no re-encode) unless --resize is given, which decodes, resizes
and re-encodes as JPEG. train.rec and train.idx are written under temporary names and renamed into place
at the end, and `property` last, so an interrupted run leaves no half-written dataset behind.
"""
from __future__ import annotations

import os
import sys

import cv2
import numpy as np
from tqdm import tqdm

from .. import atomic
from ..args import JPEG_QUALITY
from .records import LAYOUTS, DataError, FaceRecWriter

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
DEFAULT_QUALITY = JPEG_QUALITY   # the --quality default (args.RESIZE)
_FLOAT32_EXACT = 1 << 24   # float32 labels hold every integer up to here exactly


class PackError(DataError):
    """Bad input to pack: one line naming the file or folder and the problem."""


def _natural(names: list[str]) -> list[str]:
    """By number when every name is a decimal integer (so "2" comes before "10"), else by name."""
    if names and all(n.isdigit() for n in names):
        return sorted(names, key=lambda n: (int(n), n))
    return sorted(names)


def scan_folders(root: str) -> list[tuple[int, list[str]]]:
    """[(class id, [image paths])] of a folder holding one sub-folder per identity."""
    if not os.path.isdir(root):
        raise PackError(f"{root}: not a folder (--input needs a folder with one sub-folder per identity)")
    names = _natural([e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith(".")])
    if not names:
        raise PackError(f"{root}: holds no identity sub-folders")
    classes = []
    for c, name in enumerate(names):
        folder = os.path.join(root, name)
        files = sorted(e.name for e in os.scandir(folder)
                       if e.is_file() and not e.name.startswith(".") and e.name.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            raise PackError(f"{folder}: identity folder holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        classes.append((c, [os.path.join(folder, f) for f in files]))
    return classes


LST_FORMATS = ("auto", "im2rec", "path-label")
_LST_SHAPES = {"im2rec": "'index<TAB>label<TAB>path'", "path-label": "'path<TAB>label'"}


def _lst_format(fields: list[str]) -> str | None:
    """The list format one line's tab-separated fields fit, or None."""
    def parses(kind, text):
        try:
            kind(text)
            return True
        except ValueError:
            return False
    if len(fields) >= 3 and parses(int, fields[0]) and parses(float, fields[1]):
        return "im2rec"
    if len(fields) == 2 and parses(float, fields[1]):
        return "path-label"
    return None


def read_lst(path: str, root: str | None = None, fmt: str = "auto") -> list[tuple[int, list[str]]]:
    """[(class id, [image paths])] from an image list, classes ascending, images in list order.

    fmt: "im2rec" (index<TAB>label[<TAB>label...]<TAB>path), "path-label" (path<TAB>label), or "auto" (the
    format of the first entry, which every line must then follow)."""
    if fmt not in LST_FORMATS:
        raise PackError(f"--lst-format {fmt!r}: expected one of {', '.join(LST_FORMATS)}")
    root = os.path.dirname(os.path.abspath(path)) if root is None else root
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise PackError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from None
    by_class: dict[int, list[str]] = {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        fields = line.rstrip("\r").split("\t")
        seen = _lst_format(fields)
        if fmt == "auto":
            if seen is None:
                raise PackError(f"{path}: line {n} is neither {_LST_SHAPES['im2rec']} (im2rec) nor "
                                f"{_LST_SHAPES['path-label']}: {line[:60]!r}")
            fmt = seen
        elif seen != fmt:
            raise PackError(f"{path}: line {n} is not {_LST_SHAPES[fmt]} ({fmt}, the format of the list): "
                            f"{line[:60]!r}")
        text, image = (fields[1], fields[-1]) if fmt == "im2rec" else (fields[1], fields[0])
        label = float(text)
        if not np.isfinite(label) or label != int(label) or label < 0:
            raise PackError(f"{path}: line {n} has label {text!r}, not a class id (an integer >= 0)")
        by_class.setdefault(int(label), []).append(os.path.join(root, image))
    if not by_class:
        raise PackError(f"{path}: no entries")
    return sorted(by_class.items())


def _parse_size(text: str) -> tuple[int, int]:
    """"WxH" -> (width, height)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
        if w < 1 or h < 1:
            raise ValueError
    except ValueError:
        raise PackError(f"--resize {text!r}: expected WIDTHxHEIGHT, e.g. 112x112") from None
    return w, h


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise PackError(f"{path}: cannot read image ({e.strerror})") from None


def reencode(data: bytes, path: str, size: tuple[int, int], quality: int) -> bytes:
    """Decode, resize to size = (width, height), encode as JPEG."""
    img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise PackError(f"{path}: not a decodable image")
    if (img.shape[1], img.shape[0]) != size:
        shrink = size[0] < img.shape[1] or size[1] < img.shape[0]
        img = cv2.resize(img, size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise PackError(f"{path}: JPEG encoding failed")
    return buf.tobytes()


def _image_size(classes) -> tuple[int, int]:
    """(width, height) of the first image that decodes, for the property file."""
    for _, paths in classes:
        for path in paths[:4]:
            img = cv2.imdecode(np.frombuffer(_read(path), dtype=np.uint8), cv2.IMREAD_COLOR)
            if img is not None:
                return img.shape[1], img.shape[0]
        break
    raise PackError(f"{classes[0][1][0]}: the first images do not decode, so the image size for the property "
                    f"file is unknown (fix the images, or pass --resize)")


def pack(classes: list[tuple[int, list[str]]], output: str, shuffle: bool = False, seed: int = 0,
         resize: tuple[int, int] | None = None, quality: int = DEFAULT_QUALITY, layout: str = "insightface",
         progress=sys.stderr) -> dict:
    """Write output/train.rec, train.idx, property from [(class id, [image paths])], classes ascending.

    shuffle: the layout needs each identity's images on consecutive keys, so it permutes the order of the
    identities in the file and of the images within each (class ids stay as given).
    layout: "insightface" or "recbuilder" (records.FaceRecWriter).
    """
    if not classes:
        raise PackError("nothing to pack")
    if layout not in LAYOUTS:
        raise PackError(f"--layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    num_classes = classes[-1][0] + 1
    if num_classes > _FLOAT32_EXACT:
        raise PackError(f"{num_classes} classes: labels above 2^24 cannot be stored exactly as float32")
    if not 1 <= quality <= 100:
        raise PackError(f"--quality {quality}: expected 1..100")
    width, height = resize if resize else _image_size(classes)
    order = list(range(len(classes)))
    rng = np.random.default_rng(seed)
    if shuffle:
        order = rng.permutation(len(classes)).tolist()
    total = sum(len(paths) for _, paths in classes)
    os.makedirs(output, exist_ok=True)
    rec, idx = os.path.join(output, "train.rec"), os.path.join(output, "train.idx")

    def images(paths, bar):
        for path in paths:
            data = _read(path)
            yield reencode(data, path, resize, quality) if resize else data
            bar.update()

    with FaceRecWriter(rec, idx, layout) as w, tqdm(total=total, desc="pack", unit="image", file=progress,
                                                    disable=not (progress and progress.isatty())) as bar:
        for i in order:
            label, paths = classes[i]
            if shuffle:
                paths = [paths[j] for j in rng.permutation(len(paths))]
            w.add(label, images(paths, bar))
    # RecBuilder writes the image count on a second line of property; the insightface tools write one line.
    count = f"{total}\n" if layout == "recbuilder" else ""
    atomic.write_text(os.path.join(output, "property"), f"{num_classes},{height},{width}\n{count}")
    return {"images": total, "identities": len(classes), "num_classes": num_classes, "size": (width, height)}


DESCRIPTION = ("Pack one folder per identity (class ids in folder order, by number when every name is a number) or "
               "an image list (im2rec's index<TAB>label<TAB>path or path<TAB>label) into train.rec, train.idx "
               "and property, in the bytes insightface's writers produce; bytes pass through unless --resize.")


def run(args) -> int:
    """`partial-fc pack`."""
    if bool(args.input) == bool(args.lst):
        raise PackError("give exactly one of --input FOLDER and --lst FILE")
    if args.input:
        classes = scan_folders(args.input)
    else:
        classes = read_lst(args.lst, args.root, args.lst_format)
    resize = _parse_size(args.resize) if args.resize else None
    stats = pack(classes, args.output, shuffle=args.shuffle, seed=args.seed, resize=resize, quality=args.quality,
                 layout=args.layout)
    print(f"wrote {stats['images']} images of {stats['identities']} identities "
          f"(property {stats['num_classes']},{stats['size'][1]},{stats['size'][0]}) to {args.output}")
    return 0


def add_arguments(p) -> None:
    p.add_argument("--input", help="folder with one sub-folder of images per identity")
    p.add_argument("--lst", help="image list instead of --input: im2rec's index<TAB>label<TAB>path or path<TAB>label")
    p.add_argument("--lst-format", choices=LST_FORMATS, default="auto",
                   help="format of --lst; auto: the one its first entry fits (default: %(default)s)")
    p.add_argument("--root", help="folder the --lst paths are relative to (default: the list's folder)")
    p.add_argument("--output", required=True, help="folder to write train.rec, train.idx and property to")
    p.add_argument("--shuffle", action="store_true",
                   help="random order of identities in the file and of images within each (ids unchanged)")
    p.add_argument("--seed", type=int, default=0, help="seed of --shuffle (default: %(default)s)")
    p.add_argument("--layout", choices=LAYOUTS, default="insightface",
                   help="insightface: header record and identity records, as insightface's dataset tools write "
                        "them; recbuilder: images only, keys from 0, as insightface 0.7.3's RecBuilder writes "
                        "them (default: %(default)s)")
    # --resize and --quality come from the table's parent args.RESIZE.
