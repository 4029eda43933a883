"""Softmax cross-entropy over logits whose columns are split across ranks: the local pieces.

The logits are z = s * x, where x [N, S] holds the shard's cosines with each target entry replaced by z_y / s
(margin.mark_targets). The distributed operator (operator.py) places exactly two collectives between these
functions:
    M      = allreduce_max(s * row_max(x))
    S, t   = allreduce_sum(pack(exp_and_row_sums(x, s, M), target_logit))
    loss_i = log S_i - (t_i - M_i)
    dcos   = (exp(z - M) / S - onehot(y)) * scale, through the margin   (no communication)
Every function here is local math on MXNet NDArrays; none of them communicates. The [N, S] passes work in place
or into a given buffer: each [N, S] array is B_global * S floats (hundreds of MB at 10 M classes), and on CPU a
fresh one costs its page faults on every step. On CPU they run as native operators (kernels.py).
"""
from __future__ import annotations

import mxnet as mx

from . import kernels


def row_max(x: mx.nd.NDArray) -> mx.nd.NDArray:
    """Largest entry of each row on this shard, [N]."""
    return kernels.row_max(x)


def exp_and_row_sums(x: mx.nd.NDArray, s: float, global_max: mx.nd.NDArray) -> mx.nd.NDArray:
    """x = exp(s * x - M) in place; with the global row max M every entry is <= 1, so nothing overflows.
    Returns this shard's row sums of the result, [N]."""
    return kernels.exp_row_sum(x, s, global_max)


def pack(sum_exp: mx.nd.NDArray, target_logit: mx.nd.NDArray) -> mx.nd.NDArray:
    """Packed [2, N] for one allreduce: local row sums of exp, and the target logit z_y where the target is on
    this shard (0 elsewhere, so the global sum over ranks is exactly z_y)."""
    return mx.nd.stack(sum_exp, target_logit)


def loss_per_row(packed_global: mx.nd.NDArray, global_max: mx.nd.NDArray) -> mx.nd.NDArray:
    """Cross-entropy of every row, [N], from the globally summed pack and the global max."""
    sum_exp, target = packed_global[0], packed_global[1]
    return mx.nd.log(sum_exp) - (target - global_max)


def cosine_grad_t(e: mx.nd.NDArray, packed_global: mx.nd.NDArray, scale: float, s: float, col_scale: mx.nd.NDArray,
                  targets: mx.nd.NDArray | None, slope: mx.nd.NDArray | None,
                  out: mx.nd.NDArray | None = None) -> mx.nd.NDArray:
    """d(scale * sum_i loss_i)/dcos with each column multiplied by col_scale [S], transposed: [S, N].

    e: exp(z - M) [N, S] (exp_and_row_sums), overwritten. Off the targets dz = e / S_i * scale and dcos = s * dz;
    on a target, dz_y = e_y / S_i * scale - scale and dcos_y = slope * dz_y (margin.Margin.target's slope).
    targets: int64 [2, K] (row, column) of the target entries on this shard, or None. The operator passes
    col_scale = 1/|w|, which carries the cosine's center normalisation into the backward pass."""
    row_scale = scale / packed_global[0]                                           # [N]
    e_y = None if targets is None else mx.nd.gather_nd(e, targets)                 # before e is overwritten
    dcos_t = kernels.scaled_transpose(e, row_scale, s * col_scale, out=out)
    if targets is not None:
        rows, cols = targets[0], targets[1]
        dz_y = e_y * mx.nd.take(row_scale, rows) - scale
        set_entries(dcos_t, mx.nd.stack(cols, rows), slope * dz_y * mx.nd.take(col_scale, cols))
    return dcos_t


def set_entries(x: mx.nd.NDArray, index: mx.nd.NDArray, values: mx.nd.NDArray) -> None:
    """x[index[0, k], index[1, k]] = values[k] in place (the index pairs are distinct)."""
    mx.nd._internal._scatter_set_nd(lhs=x, rhs=values, indices=index, shape=x.shape, out=x)
