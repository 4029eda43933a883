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
from dataclasses import dataclass

import numpy as np

from . import checkpoint
from .checkpoint import CheckpointError
from .verification import FAR, BinError, Verifier, decode, load_pairs, result, table

EMBEDDING_OUTPUT = "fc1_output"
DECODE_CHUNK = 1024   # images decoded at once: 1024 x 3 x 112 x 112 float32 = 154 MB


@dataclass
class Model:
    source: str          # what was loaded, for the report
    symbol: object       # mx.sym.Symbol: data -> embedding
    arg_params: dict
    aux_params: dict
    step: int | None     # the trainer step (None for a plain MXNet model)


def context(gpu: int | None):
    import mxnet as mx

    from .config import ConfigError

    if gpu is None:
        return mx.cpu()
    if not 0 <= gpu < mx.context.num_gpus():
        raise ConfigError(f"--gpu {gpu}: MXNet sees {mx.context.num_gpus()} GPU(s) on this machine")
    return mx.gpu(gpu)


def _load_params(path: str) -> tuple[dict, dict]:
    import mxnet as mx

    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such parameter file")
    try:
        loaded = mx.nd.load(path)
    except mx.base.MXNetError as e:
        raise CheckpointError(f"{path}: cannot be read as MXNet parameters ({str(e).splitlines()[0]})") from None
    if not isinstance(loaded, dict) or not any(k.startswith(("arg:", "aux:")) for k in loaded):
        raise CheckpointError(f"{path}: holds no arg:/aux: parameters (not an MXNet checkpoint)")
    return ({k[4:]: v for k, v in loaded.items() if k.startswith("arg:")},
            {k[4:]: v for k, v in loaded.items() if k.startswith("aux:")})


def _embedding_symbol(sym, path: str):
    """The graph from `data` to the embedding: the symbol itself, or its fc1 output if it has a head."""
    outputs = sym.list_outputs()
    internals = sym.get_internals()
    if len(outputs) != 1 or (outputs[0] != EMBEDDING_OUTPUT and EMBEDDING_OUTPUT in internals.list_outputs()):
        if EMBEDDING_OUTPUT not in internals.list_outputs():
            raise CheckpointError(f"{path}: has outputs {outputs} and no {EMBEDDING_OUTPUT}; cannot tell which "
                                  f"is the embedding")
        sym = internals[EMBEDDING_OUTPUT]
    if "data" not in sym.list_arguments():
        raise CheckpointError(f"{path}: the graph has no input named 'data'")
    return sym


def _plain_mxnet(prefix: str, epoch: int) -> Model:
    import mxnet as mx

    sym_path = f"{prefix}-symbol.json"
    if not os.path.exists(sym_path):
        raise CheckpointError(f"{sym_path}: no such symbol file")
    try:
        sym = mx.sym.load(sym_path)
    except mx.base.MXNetError as e:
        raise CheckpointError(f"{sym_path}: not an MXNet symbol ({str(e).splitlines()[0]})") from None
    params = f"{prefix}-{epoch:04d}.params"
    arg, aux = _load_params(params)
    return Model(f"{sym_path} + {params}", _embedding_symbol(sym, sym_path), arg, aux, None)


def _trainer_checkpoint(path: str, ctx) -> Model:
    import symbols

    ckpt = checkpoint.load(path)
    meta = ckpt.meta
    try:
        sym = symbols.get_symbol(meta["network"], embedding_size=int(meta["embedding_size"]),
                                 fp16=bool(meta.get("fp16")) and ctx.device_type == "gpu",
                                 prelu_impl="depthwise" if ctx.device_type == "cpu" else "leakyrelu")
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    arg, aux = ckpt.backbone()
    return Model(path, sym, arg, aux, ckpt.step)


def load_model(spec: str, ctx=None) -> Model:
    """Resolve MODEL (see the module doc) to a graph and its parameters; CheckpointError when it cannot."""
    ctx = ctx or context(None)
    if os.path.isdir(spec):
        manifest = checkpoint.latest(spec)
        if manifest is None:
            raise CheckpointError(f"{spec}: no complete checkpoint (model-NNNN.json) in this folder")
        model = _trainer_checkpoint(manifest, ctx)
    elif re.search(r"-\d+\.params$", spec):
        prefix, epoch = spec.rsplit("-", 1)
        model = _plain_mxnet(prefix, int(epoch[:-len(".params")]))
    elif spec.endswith("-symbol.json"):
        prefix = spec[:-len("-symbol.json")]
        epochs = sorted(int(m.group(1)) for p in glob.glob(glob.escape(prefix) + "-*.params")
                        if (m := re.search(r"-(\d+)\.params$", p)))
        if not epochs:
            raise CheckpointError(f"{spec}: no {os.path.basename(prefix)}-NNNN.params next to it")
        model = _plain_mxnet(prefix, epochs[-1])
    elif "," in spec:
        prefix, _, epoch = spec.rpartition(",")
        if not epoch.strip().isdigit():
            raise CheckpointError(f"{spec}: expected PREFIX,EPOCH with an integer epoch")
        model = _plain_mxnet(prefix, int(epoch))
    elif spec.endswith(".json"):
        model = _trainer_checkpoint(spec, ctx)
    else:
        raise CheckpointError(f"{spec}: not an output folder, a model-NNNN.json manifest, PREFIX,EPOCH, "
                              f"PREFIX-NNNN.params or PREFIX-symbol.json")
    missing = [a for a in model.symbol.list_arguments() if a != "data" and a not in model.arg_params]
    missing += [a for a in model.symbol.list_auxiliary_states() if a not in model.aux_params]
    if missing:
        raise CheckpointError(f"{model.source}: the graph needs parameters the file lacks: "
                              f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    return model


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
