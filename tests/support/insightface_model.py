"""A plain MXNet model in the insightface model-zoo layout, built by a test from this project's mbf graph.

What makes it insightface-like rather than ours: MXNet's PReLU operator, BatchNorms with fix_gamma (MXNet's
default: fc1 and a trunk layer here) whose stored gammas are not 1 (weight decay moves them in real
releases), fc1 a BatchNorm on [B, D] named `fc1`, a training head `fc7` after it (the symbol's output), and
optionally a bias on pre_fc1 and no pixel normalisation in the graph. Written with mx.model.save_checkpoint.
"""
import json

import mxnet as mx
import numpy as np

import symbols


def _drop_normalisation(sym):
    """The same graph with `data` feeding what (data - 127.5) * 0.0078125 fed."""
    graph = json.loads(sym.tojson())
    nodes = graph["nodes"]
    data = next(i for i, n in enumerate(nodes) if n["name"] == "data")
    scaled = next(i for i, n in enumerate(nodes) if n["name"] == "data_scaled")
    for node in nodes:
        node["inputs"] = [[data if src == scaled else src, *rest] for src, *rest in node["inputs"]]
    return mx.sym.load_json(json.dumps(graph))


def build(network="mbf", dim=16, classes=37, *, bias=False, normalised_in_graph=True, fix_gamma=("conv1_bn",)):
    """(symbol, arg_params, aux_params) with random, BatchNorm-visible values."""
    trunk = symbols.get_symbol(network, embedding_size=dim, prelu_impl="leakyrelu").get_internals()
    body = trunk[{"mbf": "gdc_bn_output", "mnas05": "gdc_bn_output"}[network]]
    emb = mx.sym.FullyConnected(body, num_hidden=dim, no_bias=not bias, flatten=True, name="pre_fc1")
    fc1 = mx.sym.BatchNorm(emb, eps=2e-5, momentum=0.9, name="fc1")  # fix_gamma: MXNet's default, True
    head = mx.sym.FullyConnected(fc1, num_hidden=classes, no_bias=True, flatten=True, name="fc7")
    text = head.tojson()
    graph = json.loads(text)
    for node in graph["nodes"]:
        if node["name"] in fix_gamma:
            node["attrs"]["fix_gamma"] = "True"
    sym = mx.sym.load_json(json.dumps(graph))
    if not normalised_in_graph:
        sym = _drop_normalisation(sym)
    arg_shapes, _, aux_shapes = sym.infer_shape(data=(1, 3, 112, 112))
    rng = np.random.default_rng(11)
    arg, aux = {}, {}
    for name, shape in zip(sym.list_arguments(), arg_shapes):
        if name == "data":
            continue
        if name.endswith("_gamma"):
            value = rng.uniform(0.5, 1.5, shape)        # BN scales and PReLU slopes alike
        elif name.endswith("_beta") or name.endswith("_bias"):
            value = rng.normal(0, 0.1, shape)
        else:
            fan_in = int(np.prod(shape[1:])) or 1
            value = rng.normal(0, np.sqrt(2.0 / fan_in), shape)
        arg[name] = mx.nd.array(value.astype(np.float32))
    for name, shape in zip(sym.list_auxiliary_states(), aux_shapes):
        value = rng.normal(0, 0.1, shape) if name.endswith("_mean") else rng.uniform(0.5, 2.0, shape)
        aux[name] = mx.nd.array(value.astype(np.float32))
    return sym, arg, aux


def save(prefix, epoch=1, **kwargs):
    sym, arg, aux = build(**kwargs)
    mx.model.save_checkpoint(str(prefix), epoch, sym, arg, aux)
    return sym, arg, aux


def embed(sym, arg, aux, images):
    """The embedding `fc1` of a saved model's graph (its head cut off) for float32 images [n, 3, 112, 112]."""
    internals = sym.get_internals()
    out = internals["fc1_output"] if "fc1_output" in internals.list_outputs() else sym
    mod = mx.mod.Module(out, data_names=["data"], label_names=None)
    # Bound for training, as the Verifier does (MKLDNN's inference subgraph cannot be read back on CPU).
    mod.bind(data_shapes=[("data", images.shape)], for_training=True)
    mod.set_params(arg, aux, allow_missing=False, allow_extra=True)
    mod.forward(mx.io.DataBatch([mx.nd.array(images)]), is_train=False)
    return mod.get_outputs()[0].asnumpy()

