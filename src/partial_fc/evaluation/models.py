"""Loading a model to evaluate or export, in one place: a trainer checkpoint or a plain MXNet model.

MODEL is any of
    an output folder of the trainer          its newest complete checkpoint (model-NNNN.json)
    a manifest model-NNNN.json               that checkpoint
    PREFIX,EPOCH                             a plain MXNet model: PREFIX-symbol.json + PREFIX-EPOCH.params
    PREFIX-NNNN.params                       the same, named by its parameter file
    PREFIX-symbol.json                       the same, with the newest PREFIX-NNNN.params next to it
For a trainer checkpoint the graph is rebuilt from symbols/ per the manifest (network, embedding size)
rather than read from model-symbol.json, whose form (PReLU variant, fp16 trunk, dropout) is the training
run's: the parameters fit every form of the network alike. By default it is the form this machine runs
best (the depthwise PReLU on a CPU, fp32 on a CPU even for an fp16 run, no dropout); export asks for MXNet's
PReLU operator, which converts to ONNX PRelu. A plain MXNet model (e.g. an insightface release) brings its
own graph; when it still has the training head, its `fc1` output is used. Either way the input is `data`
[N, 3, 112, 112], RGB 0..255, and the output the embedding [N, D].
"""
from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass

from .. import checkpoint
from ..checkpoint import CheckpointError

EMBEDDING_OUTPUT = "fc1_output"


@dataclass
class Model:
    source: str          # what was loaded, for the report
    symbol: object       # mx.sym.Symbol: data -> embedding
    arg_params: dict
    aux_params: dict
    step: int | None     # the trainer step (None for a plain MXNet model)
    network: str | None = None          # the trainer checkpoint's network (None for a plain MXNet model)
    embedding_size: int | None = None   # its D (None for a plain MXNet model)


def context(gpu: int | None):
    import mxnet as mx

    from ..config import ConfigError

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


def _trainer_checkpoint(path: str, ctx, prelu_impl: str | None) -> Model:
    import symbols

    ckpt = checkpoint.load(path)
    meta = ckpt.meta
    network, dim = meta["network"], int(meta["embedding_size"])
    if prelu_impl is None:  # the form the trainer runs on this kind of device, the same function either way
        prelu_impl = "depthwise" if ctx.device_type == "cpu" else "leakyrelu"
    try:
        sym = symbols.get_symbol(network, embedding_size=dim, dropout=0.0, prelu_impl=prelu_impl,
                                 fp16=bool(meta.get("fp16")) and ctx.device_type == "gpu")
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    arg, aux = ckpt.backbone()
    return Model(path, sym, arg, aux, ckpt.step, network, dim)


def load_model(spec: str, ctx=None, *, prelu_impl: str | None = None) -> Model:
    """Resolve MODEL (see the module doc) to a graph and its parameters; CheckpointError when it cannot.

    ctx: the MXNet context to run on (default: the CPU); a trainer checkpoint's graph is fp32 on a CPU.
    prelu_impl: the PReLU form of a trainer checkpoint's graph, "leakyrelu" (MXNet's operator) or "depthwise"
    (see symbols.common.prelu); None: the depthwise form on a CPU, MXNet's operator on a GPU. A plain MXNet
    model keeps its own graph.
    """
    ctx = ctx or context(None)
    if os.path.isdir(spec):
        manifest = checkpoint.latest(spec)
        if manifest is None:
            raise CheckpointError(f"{spec}: no complete checkpoint (model-NNNN.json) in this folder")
        model = _trainer_checkpoint(manifest, ctx, prelu_impl)
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
        model = _trainer_checkpoint(spec, ctx, prelu_impl)
    else:
        raise CheckpointError(f"{spec}: not an output folder, a model-NNNN.json manifest, PREFIX,EPOCH, "
                              f"PREFIX-NNNN.params or PREFIX-symbol.json")
    missing = [a for a in model.symbol.list_arguments() if a != "data" and a not in model.arg_params]
    missing += [a for a in model.symbol.list_auxiliary_states() if a not in model.aux_params]
    if missing:
        raise CheckpointError(f"{model.source}: the graph needs parameters the file lacks: "
                              f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    return model
