"""PFC_PRETRAINED: start a run's backbone from a model instead of from the seed (a new head, a fresh optimizer).

The model is anything evaluation/models.load_model reads: a plain MXNet model as PREFIX,EPOCH (the insightface
model-zoo layout: PREFIX-symbol.json + PREFIX-NNNN.params, embedding output `fc1`, usually still carrying its
training head `fc7`), or this project's checkpoint (a model-NNNN.json manifest or an output folder). Only the
parameters of the source's embedding graph count; its classifier is dropped, since the run's head is new
for its own classes.

What the source's graph differs in, and what is done about it (each reported on rank 0, and recorded in
config.json under pretrained_from):

* **input normalisation**: the networks of symbols/ normalise raw pixels inside the graph, (x - 127.5) *
  0.0078125. The source's chain of scalar operations from `data` to its first other operation is read:
  the same chain is reported as such (the run computes the source's function of raw pixels); no chain
  means the source expects pixels normalised outside its graph, and the run's first forward of raw pixels
  equals the source's of (x - 127.5) * 0.0078125 (a source fed another normalisation differs); any other
  chain is reported with its scale and offset (the run then sees its inputs scaled differently).
* **BatchNorm with fix_gamma** (MXNet's default, and insightface's for fc1 and more): such a layer computes
  with gamma = 1 whatever value the file holds (weight decay moves the stored value), while symbols/ learns
  every gamma; those gammas are set to 1, so the run computes exactly what the source computed.
* **a bias on pre_fc1** (insightface's FullyConnected has one; ours does not, the BatchNorm after it cancels
  it): folded into fc1's moving mean, BN(x + b) = BN'(x) with moving_mean' = moving_mean - b.
* **PReLU**: MXNet's operator and the depthwise CPU form share parameter names and shapes (symbols/common.py).

Every other difference from the chosen PFC_NETWORK is an error naming the parameters: missing from the file,
extra in it, or of another shape. PFC_PRETRAINED_STRICT=0 lets the run start anyway: missing and reshaped
parameters start from the seed (as a fresh run's would) and extra ones are ignored, all of them listed.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np

from ..config import Config, ConfigError
from ..evaluation.models import load_model

IMAGE_BATCH = (1, 3, 112, 112)
# The chain of symbols/common.normalized_input: (x - 127.5) * 0.0078125.
OWN_CHAIN = (("_minus_scalar", 127.5), ("_mul_scalar", 0.0078125))
_AFFINE = {"_minus_scalar": lambda a, b, s: (a, b - s), "_plus_scalar": lambda a, b, s: (a, b + s),
           "_mul_scalar": lambda a, b, s: (a * s, b * s), "_div_scalar": lambda a, b, s: (a / s, b / s)}
_PASS_THROUGH = ("identity", "_copy", "Cast", "BlockGrad")
_SHOWN = 6  # names listed in a message before "..."


class PretrainedError(ConfigError):
    """PFC_PRETRAINED names a model that does not fit this run."""


@dataclass
class Pretrained:
    spec: str                 # PFC_PRETRAINED as given
    source: str               # the files read
    kind: str                 # "mxnet" (a plain MXNet model) or "checkpoint" (this project's)
    arg_params: dict          # what the run loads, names and shapes of its network
    aux_params: dict
    normalisation: str        # "same", "none" or "other" (see describe())
    chain: list = field(default_factory=list)       # the source's scalar ops from `data`: [(op, scalar)]
    gamma_reset: list = field(default_factory=list)  # gammas of fix_gamma BatchNorms, set to 1
    folded: list = field(default_factory=list)       # biases folded into a following BatchNorm's mean
    dropped: list = field(default_factory=list)      # parameters outside the source's embedding graph (its head)
    missing: list = field(default_factory=list)      # the network's, absent from the file (start from the seed)
    extra: list = field(default_factory=list)        # the file's, absent from the network (ignored)
    reshaped: list = field(default_factory=list)     # in both with other shapes (start from the seed)
    step: int | None = None   # a trainer checkpoint's step

    def normalisation_text(self) -> str:
        if self.normalisation == "same":
            return "pixel normalisation inside its graph, (x - 127.5) * 0.0078125, as this run's"
        if self.normalisation == "none":
            return ("no pixel normalisation in its graph: it expects (x - 127.5) * 0.0078125 applied outside, "
                    "which this run's graph applies inside")
        a, b = affine(self.chain)
        return (f"its graph maps pixels to x * {a:g} + {b:g} (this run's: x * 0.0078125 - 0.99609375): its "
                f"first layer now sees differently scaled inputs")

    def describe(self) -> dict:
        """What config.json records about the start."""
        return {"spec": self.spec, "source": self.source, "kind": self.kind, "step": self.step,
                "normalisation": self.normalisation, "normalisation_chain": [list(c) for c in self.chain],
                "gamma_reset_to_1": self.gamma_reset, "folded_bias": self.folded, "dropped": self.dropped,
                "missing_from_seed": self.missing, "extra_ignored": self.extra, "reshaped_from_seed": self.reshaped}

    def summary(self) -> str:
        """Rank 0's start-up line."""
        parts = [f"backbone from {self.source} ({'this project' if self.kind == 'checkpoint' else 'plain MXNet'}"
                 f"{f', step {self.step}' if self.step is not None else ''}): {self.normalisation_text()}"]
        if self.gamma_reset:
            parts.append(f"{len(self.gamma_reset)} fix_gamma BatchNorm gamma(s) set to 1")
        if self.folded:
            parts.append(f"folded {', '.join(self.folded)} into the next BatchNorm's moving mean")
        if self.dropped:
            parts.append(f"dropped its head ({_names(self.dropped)}); the centers are new")
        for what, names in (("from the seed (missing)", self.missing), ("from the seed (other shape)", self.reshaped),
                            ("ignored (extra)", self.extra)):
            if names:
                parts.append(f"{len(names)} {what}: {_names(names)}")
        return "; ".join(parts) + "; the optimizer starts fresh"


def _names(names: list[str]) -> str:
    return ", ".join(names[:_SHOWN]) + (f" ... ({len(names)} in all)" if len(names) > _SHOWN else "")


def affine(chain) -> tuple[float, float]:
    """(a, b) with chain(x) = a * x + b."""
    a, b = 1.0, 0.0
    for op, scalar in chain:
        a, b = _AFFINE[op](a, b, scalar)
    return a, b


def _graph(symbol) -> list[dict]:
    return json.loads(symbol.tojson())["nodes"]


def _true(value) -> bool:
    return str(value).strip().lower() in ("true", "1")


def input_chain(symbol) -> tuple[str, list]:
    """("same" | "none" | "other", [(op, scalar)]): the scalar operations between `data` and the first other
    operation of the graph."""
    nodes = _graph(symbol)
    current = next(i for i, n in enumerate(nodes) if n["op"] == "null" and n["name"] == "data")
    chain = []
    while True:
        consumers = [i for i, n in enumerate(nodes) if any(src == current for src, *_ in n["inputs"])]
        if len(consumers) != 1:
            break
        node = nodes[consumers[0]]
        if node["op"] in _AFFINE:
            chain.append((node["op"], float(node["attrs"]["scalar"])))
        elif node["op"] not in _PASS_THROUGH:
            break
        current = consumers[0]
    if not chain:
        return "none", chain
    same = len(chain) == len(OWN_CHAIN) and all(op == o and np.float32(s) == np.float32(t)
                                                for (op, s), (o, t) in zip(chain, OWN_CHAIN))
    return ("same" if same else "other"), chain


def fixed_gammas(symbol) -> list[str]:
    """The gamma variables of the graph's BatchNorms that compute with gamma = 1 (fix_gamma, MXNet's default)."""
    nodes = _graph(symbol)
    names = []
    for n in nodes:
        if n["op"] == "BatchNorm" and _true(n.get("attrs", {}).get("fix_gamma", "True")):
            names.append(nodes[n["inputs"][1][0]]["name"])
    return names


def _bias_before_batchnorm(symbol) -> dict[str, tuple[str, str]]:
    """{bias: (moving_mean, BatchNorm name)} for FullyConnected/Convolution biases whose output feeds a BatchNorm,
    possibly through reshapes (insightface's pre_fc1 -> fc1)."""
    nodes = _graph(symbol)
    found = {}
    for i, n in enumerate(nodes):
        if n["op"] not in ("FullyConnected", "Convolution") or len(n["inputs"]) < 3:
            continue
        bias = nodes[n["inputs"][2][0]]["name"]
        current = i
        while True:
            consumers = [j for j, m in enumerate(nodes) if any(src == current for src, *_ in m["inputs"])]
            if len(consumers) != 1 or nodes[consumers[0]]["op"] not in ("BatchNorm", "Reshape", "Flatten",
                                                                         "reshape"):
                break
            current = consumers[0]
            if nodes[current]["op"] == "BatchNorm":
                found[bias] = (nodes[nodes[current]["inputs"][3][0]]["name"], nodes[current]["name"])
                break
    return found


def load(cfg: Config, symbol) -> Pretrained:
    """Read PFC_PRETRAINED and fit it to `symbol` (the run's backbone graph); PretrainedError when it does not fit
    (unless PFC_PRETRAINED_STRICT=0). The returned parameters are NDArrays on the CPU."""
    import mxnet as mx

    spec = cfg.pretrained.strip()
    if os.path.isdir(spec) or spec.endswith(".json"):
        kind = "checkpoint"
    else:
        kind = "mxnet"
    model = load_model(spec)
    if kind == "checkpoint" and model.network != cfg.network:
        raise PretrainedError(f"PFC_PRETRAINED={spec}: {model.source} is a {model.network} checkpoint, this run's "
                              f"PFC_NETWORK is {cfg.network}")
    normalisation, chain = ("same", list(OWN_CHAIN)) if kind == "checkpoint" else input_chain(model.symbol)
    src_args = [a for a in model.symbol.list_arguments() if a != "data"]
    src_aux = list(model.symbol.list_auxiliary_states())
    used = set(src_args) | set(src_aux)
    dropped = sorted(set(model.arg_params) - used) + sorted(set(model.aux_params) - used)
    arg = {k: model.arg_params[k].copy() for k in src_args}
    aux = {k: model.aux_params[k].copy() for k in src_aux}

    arg_shapes, _, aux_shapes = symbol.infer_shape(data=IMAGE_BATCH)
    want_arg = {k: tuple(s) for k, s in zip(symbol.list_arguments(), arg_shapes) if k != "data"}
    want_aux = {k: tuple(s) for k, s in zip(symbol.list_auxiliary_states(), aux_shapes)}

    gamma_reset = []
    if kind == "mxnet":
        for name in fixed_gammas(model.symbol):
            if name in arg and name in want_arg:
                arg[name] = mx.nd.ones(arg[name].shape, dtype=arg[name].dtype)
                gamma_reset.append(name)
    folded = []
    for bias, (mean, _bn) in _bias_before_batchnorm(model.symbol).items():
        if bias in arg and bias not in want_arg and mean in aux and aux[mean].shape == arg[bias].shape:
            aux[mean] = aux[mean] - arg.pop(bias)
            folded.append(bias)

    have = {**{k: tuple(v.shape) for k, v in arg.items()}, **{k: tuple(v.shape) for k, v in aux.items()}}
    want = {**want_arg, **want_aux}
    missing = sorted(k for k in want if k not in have)
    extra = sorted(k for k in have if k not in want)
    reshaped = sorted(k for k in want if k in have and have[k] != want[k])
    if cfg.pretrained_strict and (missing or extra or reshaped):
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing ({_names(missing)})")
        if extra:
            problems.append(f"{len(extra)} extra ({_names(extra)})")
        if reshaped:
            problems.append(f"{len(reshaped)} of another shape (" + _names(
                [f"{k} {have[k]} vs {want[k]}" for k in reshaped]) + ")")
        fresh = " and ".join(what for what, names in (("missing", missing), ("reshaped", reshaped)) if names)
        allow = " and ".join(([f"starts the {fresh} ones from the seed"] if fresh else [])
                             + (["ignores the extra ones"] if extra else []))
        raise PretrainedError(f"PFC_PRETRAINED={spec}: {model.source} does not fit PFC_NETWORK={cfg.network} "
                              f"(D={cfg.embedding_size}): {'; '.join(problems)}; PFC_PRETRAINED_STRICT=0 {allow}")
    keep = {k for k in want if k in have and have[k] == want[k]}
    return Pretrained(spec=spec, source=model.source, kind=kind,
                      arg_params={k: v for k, v in arg.items() if k in keep},
                      aux_params={k: v for k, v in aux.items() if k in keep},
                      normalisation=normalisation, chain=chain, gamma_reset=gamma_reset, folded=folded,
                      dropped=dropped, missing=missing, extra=extra, reshaped=reshaped, step=model.step)
