"""ONNX export of a trained backbone, checked against MXNet before the file is kept.

    partial-fc export CHECKPOINT --output model.onnx [--batch-check N] [--opset 13]

CHECKPOINT is a trainer checkpoint (its manifest model-NNNN.json, or the output folder, whose newest
complete checkpoint is taken) or a plain MXNet model (PREFIX,EPOCH, PREFIX-NNNN.params, PREFIX-symbol.json),
loaded by models.load_model as `partial-fc verify` loads them: a trainer checkpoint's graph rebuilt from
symbols/ in fp32 without dropout and with MXNet's PReLU operator (one ONNX PRelu per layer), a plain
model's own graph cut at fc1 if it still carries a training head.

The model has one input ``data`` float32 [N, 3, 112, 112] (raw RGB pixels 0..255, N free) and one output
``fc1`` float32 [N, D], the embedding before L2 normalisation; the normalisation (x - 127.5) / 128 stays in
the graph as its first two nodes, Sub and Mul. insightface's recognition class (ArcFaceONNX) looks for
nodes named Sub*/Mul* among the first eight to decide that the model normalises by itself and feeds raw
pixels (mean 0, std 1); the exporter names those two nodes so that it does.

MXNet's exporter (mx.onnx, MXNet 1.9.1) needs three repairs of its output, each a trap of docs/design.md §2:
* PReLU slopes are stored as (C,), which MXNet's operator requires; ONNX PRelu broadcasts the slope against
  [N, C, H, W] from the right, so they become (C, 1, 1);
* every parameter is listed as a graph input as well as an initializer; onnxruntime then treats them as
  overridable inputs and insightface takes session.get_inputs()[0] as the image, so only ``data`` is left;
* the model is declared at the opset the converters target (13 by default) rather than at the newest one
  the installed onnx package knows, which older runtimes refuse.
The networks of symbols/ avoid the other two (FullyConnected carries an explicit ``flatten``, BatchNorm never
fixes gamma); a plain MXNet model's graph is repaired for both (see _repair_plain).

The exported model is run by onnxruntime and the same parameters by MXNet on the same random pixels, at
batch N and at batch 1; a difference above TOLERANCE (absolute, on the embedding) means the file is not
written.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from .. import atomic, checkpoint
from ..args import positive_int
from ..errors import UserError

TOLERANCE = 1e-4        # largest absolute difference of any embedding value, onnxruntime vs MXNet
DEFAULT_OPSET = 13      # MXNet 1.9.1's converters are written for opsets 12 and 13
IMAGE_SHAPE = (3, 112, 112)
OUTPUT = "fc1"


class ExportError(UserError, ValueError):
    """A checkpoint that cannot be exported, or an export whose output does not match MXNet's."""


@dataclass
class Source:
    """What gets exported: an fp32 embedding graph (output fc1) and its parameters as fp32 NDArrays."""
    path: str
    symbol: object
    arg_params: dict
    aux_params: dict
    description: str


@dataclass
class Result:
    path: str           # the written .onnx
    max_abs_diff: float
    batch: int
    embedding_size: int
    description: str


def load_source(path: str) -> Source:
    """The graph and parameters to export from CHECKPOINT (see the module doc)."""
    import mxnet as mx

    from .models import load_model

    if os.path.isdir(path):
        if checkpoint.latest(path) is None:
            raise ExportError(f"{path}: holds no complete checkpoint (no model-NNNN.json manifest)")
    elif not os.path.exists(path) and ("," not in path or path.endswith(".json")):
        raise ExportError(f"{path}: no such file or folder")
    # On the CPU a trainer checkpoint's graph is fp32; MXNet's PReLU operator is what the ONNX converter knows.
    model = load_model(path, mx.cpu(), prelu_impl="leakyrelu")
    if model.network is not None:  # a trainer checkpoint: its graph comes from symbols/ and needs no repair
        return Source(model.source, model.symbol, _fp32(model.arg_params), _fp32(model.aux_params),
                      f"{model.network}, D={model.embedding_size}, step {model.step}")
    symbol, ones = _repair_plain(model.symbol, model.arg_params)
    arg = dict(_fp32(model.arg_params), **ones)
    return Source(path, symbol, arg, _fp32(model.aux_params), model.source)


def _repair_plain(sym, arg_params: dict):
    """(symbol, {gamma: ones}) for a graph not built by symbols/: every FullyConnected gets an explicit
    flatten (MXNet's default, True; the ONNX converter reads the attribute), and the gamma of every BatchNorm
    with fix_gamma=True (MXNet's default; insightface's released models have one before fc1) becomes 1, the
    value MXNet computes with whatever the file holds, where ONNX BatchNormalization would use the file's."""
    import mxnet as mx

    graph = json.loads(sym.tojson())
    nodes = graph["nodes"]
    ones = {}
    for node in nodes:
        attrs = node.setdefault("attrs", {})
        if node["op"] == "FullyConnected":
            attrs.setdefault("flatten", "True")
        elif node["op"] == "BatchNorm" and attrs.get("fix_gamma", "True") in ("True", "true", "1"):
            gamma = nodes[node["inputs"][1][0]]["name"]
            if gamma in arg_params:
                ones[gamma] = mx.nd.ones(arg_params[gamma].shape, dtype=np.float32)
    return mx.sym.load_json(json.dumps(graph)), ones


def _fp32(params: dict) -> dict:
    return {k: v.astype(np.float32) if v.dtype != np.float32 else v for k, v in params.items()}


def _first_line(error) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _check_params(source: Source) -> int:
    """Every parameter the graph needs, with the shape it needs; returns the embedding size."""
    sym = source.symbol
    try:
        arg_shapes, out_shapes, aux_shapes = sym.infer_shape(data=(1,) + IMAGE_SHAPE)
    except Exception as e:  # MXNetError, or a graph with other inputs than data
        raise ExportError(f"{source.path}: the graph does not take data [N,3,112,112] ({_first_line(e)})") from None
    if arg_shapes is None:
        raise ExportError(f"{source.path}: the graph's shapes cannot be inferred from data [N,3,112,112]")
    for names, shapes, params in ((sym.list_arguments(), arg_shapes, source.arg_params),
                                  (sym.list_auxiliary_states(), aux_shapes, source.aux_params)):
        for name, shape in zip(names, shapes):
            if name == "data":
                continue
            if name not in params:
                raise ExportError(f"{source.path}: lacks the parameter {name} of the graph")
            if tuple(params[name].shape) != tuple(shape):
                raise ExportError(f"{source.path}: parameter {name} has shape {tuple(params[name].shape)}, "
                                  f"the graph needs {tuple(shape)}")
    out = out_shapes[0]
    if len(out) != 2:
        raise ExportError(f"{source.path}: the output has shape {out}, not [N, D]")
    return int(out[1])


def to_onnx(source: Source, opset: int = DEFAULT_OPSET):
    """The onnx.ModelProto of `source`, with the repairs described at the top of this file."""
    import mxnet as mx
    import onnx
    from mxnet.onnx.mx2onnx._export_onnx import MXNetGraph  # export_model() would force the newest opset

    dim = _check_params(source)
    params = dict(source.arg_params, **source.aux_params)
    try:
        graph = MXNetGraph().create_onnx_graph_proto(
            source.symbol, params, [(1,) + IMAGE_SHAPE], [onnx.TensorProto.FLOAT], opset_version=opset,
            dynamic=True, dynamic_input_shapes=[(None,) + IMAGE_SHAPE])
    except (mx.base.MXNetError, AttributeError, KeyError, ValueError, onnx.checker.ValidationError) as e:
        raise ExportError(f"{source.path}: MXNet's ONNX exporter failed ({_first_line(e)})") from None
    _reshape_prelu_slopes(graph)
    _drop_parameter_inputs(graph)
    _name_normalisation(graph)
    _name_batch_dim(graph, dim)
    model = onnx.helper.make_model(graph, producer_name="partial-fc",
                                   opset_imports=[onnx.helper.make_opsetid("", opset)])
    # The IR version the opset came with, so that runtimes as old as the opset accept the file.
    try:
        model.ir_version = onnx.helper.find_min_ir_version_for([model.opset_import[0]])
    except ValueError:
        raise ExportError(f"opset {opset} is newer than the installed onnx {onnx.__version__} knows") from None
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"{source.path}: the exported model is not valid ONNX ({_first_line(e)})") from None
    return model


def _reshape_prelu_slopes(graph) -> None:
    initializers = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "PRelu" and node.input[1] in initializers:
            slope = initializers[node.input[1]]
            if len(slope.dims) == 1:  # every PReLU of the networks acts on [N, C, H, W] feature maps
                slope.dims[:] = [slope.dims[0], 1, 1]


def _drop_parameter_inputs(graph) -> None:
    initializers = {t.name for t in graph.initializer}
    keep = [i for i in graph.input if i.name not in initializers]
    del graph.input[:]
    graph.input.extend(keep)


def _name_normalisation(graph) -> None:
    """Name the in-graph normalisation Sub_*/Mul_* (insightface reads node names to detect it): the Sub and
    Mul applied to `data` one after the other, in either order. Other graphs are left as they are."""
    first = [n for n in graph.node[:8] if list(n.input[:1]) == ["data"]]
    if len(first) != 1 or first[0].op_type not in ("Sub", "Mul"):
        return
    second = [n for n in graph.node[:8] if list(n.input[:1]) == [first[0].output[0]]]
    if len(second) != 1 or {first[0].op_type, second[0].op_type} != {"Sub", "Mul"}:
        return
    for node in (first[0], second[0]):
        if not node.name.startswith(node.op_type):
            node.name = f"{node.op_type}_{node.name or 'input'}"


def _name_batch_dim(graph, dim: int) -> None:
    graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    out = graph.output[0].type.tensor_type.shape.dim
    out[0].dim_param = "N"
    out[1].dim_value = dim


def reference_embeddings(source: Source, images: np.ndarray) -> np.ndarray:
    """MXNet's fc1 [n, D] for float32 images [n, 3, 112, 112], BatchNorm in inference mode."""
    import mxnet as mx

    mod = mx.mod.Module(source.symbol, data_names=["data"], label_names=None, context=mx.cpu())
    # Bound "for training", run with is_train=False (as protocol.Verifier does): an inference-only
    # bind on CPU goes through MXNet 1.9.1's MKLDNN subgraph fusion, whose outputs cannot be read back
    # after the first forward. The other way out, MXNET_SUBGRAPH_BACKEND=NONE, only works if set before
    # mxnet is imported, which a function cannot promise.
    mod.bind(data_shapes=[("data", images.shape)], for_training=True)
    mod.set_params(source.arg_params, source.aux_params, allow_missing=False, allow_extra=True)
    mod.forward(mx.io.DataBatch([mx.nd.array(images)]), is_train=False)
    return mod.get_outputs()[0].asnumpy()


def onnx_embeddings(model_bytes: bytes, images: np.ndarray) -> np.ndarray:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1  # the check is small; do not compete with training on the same host
    session = onnxruntime.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    return session.run([OUTPUT], {"data": images})[0]


def export(source_path: str, output: str, *, batch_check: int = 4, opset: int = DEFAULT_OPSET,
           seed: int = 0) -> Result:
    """Export, compare onnxruntime with MXNet on `batch_check` random images, write `output` if they agree."""
    if opset < 12:
        raise ExportError(f"opset {opset} is too old: MXNet's ONNX converters need 12 or newer")
    folder = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(folder):
        raise ExportError(f"{output}: the folder {folder} does not exist")
    source = load_source(source_path)
    model = to_onnx(source, opset)
    data = model.SerializeToString()

    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(batch_check,) + IMAGE_SHAPE).astype(np.float32)
    want = reference_embeddings(source, images)
    try:
        got = onnx_embeddings(data, images)
        single = onnx_embeddings(data, images[:1])  # the batch dimension really is free
    except Exception as e:  # onnxruntime raises its own exception classes
        raise ExportError(f"{source.path}: onnxruntime cannot run the exported model ({_first_line(e)})") from None
    if got.shape != want.shape or single.shape != (1,) + want.shape[1:]:
        raise ExportError(f"{source.path}: onnxruntime gives shape {got.shape}, MXNet {want.shape}")
    diff = float(max(np.max(np.abs(got - want)), np.max(np.abs(single - want[:1]))))
    if not diff <= TOLERANCE:  # also catches NaN
        raise ExportError(f"{source.path}: onnxruntime and MXNet differ by up to {diff:.3g} (> {TOLERANCE:g}); "
                          f"{output} not written")
    atomic.write_bytes(output, data)
    return Result(output, diff, batch_check, int(want.shape[1]), source.description)


DESCRIPTION = ("Export a backbone to ONNX (input data [N,3,112,112] raw RGB 0..255, output fc1 [N,D]), run it "
               "with onnxruntime and MXNet on the same random images and write the file only if they agree "
               f"within {TOLERANCE:g}.")


def add_arguments(p) -> None:
    p.add_argument("checkpoint", help="a trainer output folder (newest checkpoint), a model-NNNN.json manifest, or "
                                      "a plain MXNet model as PREFIX,EPOCH, PREFIX-NNNN.params or PREFIX-symbol.json")
    p.add_argument("--output", required=True, help="the .onnx file to write")
    p.add_argument("--batch-check", type=positive_int, default=4, metavar="N",
                   help="random images compared between onnxruntime and MXNet (default: %(default)s)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                   help="ONNX opset to declare, 12 or newer (default: %(default)s)")


def run(args) -> int:
    """`partial-fc export`: one line naming the model, the file and the largest difference."""
    result = export(args.checkpoint, args.output, batch_check=args.batch_check, opset=args.opset)
    print(f"exported {result.description} to {result.path} (embedding size {result.embedding_size}); "
          f"onnxruntime vs MXNet on {result.batch} images: max abs diff {result.max_abs_diff:.3g} "
          f"(limit {TOLERANCE:g})")
    return 0
