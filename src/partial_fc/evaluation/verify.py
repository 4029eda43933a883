"""`partial-fc verify`: a trained model on verification `.bin` sets, the protocol of verification.py.

    partial-fc verify MODEL BIN [BIN ...] [--batch-size 32] [--json]

MODEL is any of
    an output folder of the trainer          its newest complete checkpoint (model-NNNN.json)
    a manifest model-NNNN.json               that checkpoint
    PREFIX,EPOCH                             a plain MXNet model: PREFIX-symbol.json + PREFIX-EPOCH.params
    PREFIX-NNNN.params                       the same, named by its parameter file
    PREFIX-symbol.json                       the same, with the newest PREFIX-NNNN.params next to it
For a trainer checkpoint the graph is rebuilt from symbols/ per the manifest (network, embedding size),
in the form this machine runs best (the CPU PReLU variant, fp32 on a CPU even for an fp16 run): the
parameters are the same. A plain MXNet model (e.g. an insightface release) brings its own graph; when it
still has the training head, its `fc1` output is used. Either way the input is `data`, RGB 0..255.

BIN may be a folder: every *.bin in it. Sets are read one at a time and decoded DECODE_CHUNK images at a
time, so memory holds one set's encoded bytes plus one chunk of pixels (a whole decoded LFW, 12,000
images as float32, would be 1.8 GB).
"""
from __future__ import annotations

import glob
import json
import math
import os
import re
import sys
import numpy as np

from ..data.bins import BinError, decode, load_pairs
from .models import Model, context, load_model
from .protocol import FAR, Verifier, result, table

DECODE_CHUNK = 1024   # images decoded at once: 1024 x 3 x 112 x 112 float32 = 154 MB

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


def _progress(name: str, stream):
    def show(done, total):
        if stream.isatty():
            stream.write(f"\rverify: {name}: {done}/{total} images")
            if done == total:
                stream.write("\n")
            stream.flush()
    return show


def run(model_spec: str, bins: list[str], *, batch_size: int = 32, gpu: int | None = None,
        stream=None) -> tuple[Model, list]:
    """Verify the model on each .bin; returns (model, [verification.Result]). Progress goes to `stream`."""
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
        show = _progress(name, stream)
        emb = []
        for start in range(0, n, DECODE_CHUNK):
            pixels = decode(images[start:start + DECODE_CHUNK], path, first=start)
            emb.append(verifier.embed(pixels, lambda done, _, s=start: show(s + done, n)))
        results.append(result(name, np.concatenate(emb), issame))
        del images
    return model, results


def as_json(model: Model, results: list) -> dict:
    def number(x):
        return None if not math.isfinite(x) else x

    return {"model": model.source, "step": model.step, "far": FAR,
            "sets": [{"name": r.name, "pairs": r.pairs, "accuracy": r.accuracy, "std": r.std, "xnorm": r.xnorm,
                      "threshold": r.threshold, "tar_at_far": number(r.tar)} for r in results]}


def main(args) -> int:
    model, results = run(args.model, args.bins, batch_size=args.batch_size, gpu=args.gpu)
    if args.json:
        print(json.dumps(as_json(model, results), indent=1))
    else:
        print(f"model: {model.source}")
        print(table(results, model.step))
    return 0
