"""`partial-fc verify`: a trained model on verification `.bin` sets, the protocol of protocol.py.

    partial-fc verify MODEL BIN [BIN ...] [--batch-size 32] [--json]

MODEL is a trainer output folder, a model-NNNN.json manifest or a plain MXNet model, loaded by
models.load_model (see models.py for the forms it takes and the graph it builds). BIN may be a folder:
every *.bin in it. Sets are read one at a time and decoded DECODE_CHUNK images at a time, so memory holds
one set's encoded bytes plus one chunk of pixels (a whole decoded LFW, 12,000 images as float32, would be
1.8 GB). Progress goes to stderr (a bar on a terminal), the table or JSON to stdout.
"""
from __future__ import annotations

import glob
import json
import math
import os
import sys
from functools import partial

import numpy as np
from tqdm import tqdm

from ..data.bins import BinError, decode, load_pairs
from .models import Model, context, load_model
from .protocol import FAR, Verifier, result, table

DECODE_CHUNK = 1024   # images decoded at once: 1024 x 3 x 112 x 112 float32 = 154 MB

DESCRIPTION = ("10-fold verification accuracy (with flip), its std, XNorm and TAR at FAR=1e-3 (protocol.FAR) of a "
               "model on .bin pair sets (lfw, cfp_fp, agedb_30 style).")


def bin_paths(items: list[str]) -> list[str]:
    """The .bin files named, a folder standing for every *.bin in it."""
    paths = []
    for item in items:
        if os.path.isdir(item):
            found = sorted(glob.glob(os.path.join(glob.escape(item), "*.bin")))
            if not found:
                raise BinError(f"{item}: a folder with no *.bin in it")
            paths += found
        elif not os.path.exists(item):
            raise BinError(f"{item}: no such file")
        else:
            paths.append(item)
    return paths


def _advance(bar, offset: int, done: int, _total: int) -> None:
    """Verifier.embed's progress(done, total) within a chunk that starts at image `offset` of the set."""
    bar.update(offset + done - bar.n)


def verify_model(model_spec: str, bins: list[str], *, batch_size: int = 32, gpu: int | None = None,
                 stream=None) -> tuple[Model, list]:
    """Verify the model on each .bin; returns (model, [protocol.Result]). Progress goes to `stream`."""
    stream = stream or sys.stderr
    paths = bin_paths(bins)
    for path in paths:  # every set is checked before the long part starts
        load_pairs(path)
    ctx = context(gpu)
    model = load_model(model_spec, ctx)
    verifier = Verifier([], model.symbol, batch_size=batch_size, ctx=ctx)
    verifier.set_params(model.arg_params, model.aux_params)
    results = []
    for path in paths:
        name = os.path.splitext(os.path.basename(path))[0]
        images, issame = load_pairs(path)
        n = len(images)
        print(f"verify: {name}: {len(issame)} pairs, {n} images x 2 (flip)", file=stream, flush=True)
        emb = []
        with tqdm(total=n, desc=f"verify: {name}", unit="image", file=stream, disable=not stream.isatty()) as bar:
            for start in range(0, n, DECODE_CHUNK):
                pixels = decode(images[start:start + DECODE_CHUNK], path, first=start)
                emb.append(verifier.embed(pixels, partial(_advance, bar, start)))
        results.append(result(name, np.concatenate(emb), issame))
        del images
    return model, results


def as_json(model: Model, results: list) -> dict:
    def number(x):
        return None if not math.isfinite(x) else x

    return {"model": model.source, "step": model.step, "far": FAR,
            "sets": [{"name": r.name, "pairs": r.pairs, "accuracy": r.accuracy, "std": r.std, "xnorm": r.xnorm,
                      "threshold": r.threshold, "tar_at_far": number(r.tar)} for r in results]}


def add_arguments(p) -> None:
    p.add_argument("model", help="a trainer output folder (newest checkpoint), a model-NNNN.json manifest, "
                                 "PREFIX,EPOCH, PREFIX-NNNN.params or PREFIX-symbol.json of a plain MXNet model")
    p.add_argument("bins", nargs="+", metavar="BIN", help=".bin pair sets, or folders holding them")
    # --batch-size, --gpu (args.INFERENCE) and --json (args.JSON) come from the table's parents.


def run(args) -> int:
    """`partial-fc verify`: the table (or JSON) on stdout."""
    model, results = verify_model(args.model, args.bins, batch_size=args.batch_size, gpu=args.gpu)
    if args.json:
        print(json.dumps(as_json(model, results), indent=1))
    else:
        print(f"model: {model.source}")
        print(table(results, model.step))
    return 0
