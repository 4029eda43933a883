"""Softmax cross-entropy over logits whose columns are split across ranks: the local pieces.

The distributed operator (partial_fc.py) places exactly two collectives between these functions:
    M      = allreduce_max(row_max(z))
    S, t   = allreduce_sum(pack(sum_exp(z, M), target_logit(z, y)))
    loss_i = log S_i - (t_i - M_i)
    dz     = (exp(z - M) / S - onehot(y)) * scale            (no communication)
Every function here is local math on MXNet NDArrays; none of them communicates. The [N, S] steps take an
`out` so that the operator can run them in place: each [N, S] array is B_global * S floats (hundreds of MB at
10 M classes), and on CPU a fresh one costs its page faults on every step.
"""
from __future__ import annotations

import mxnet as mx


def row_max(z: mx.nd.NDArray) -> mx.nd.NDArray:
    """Largest logit of each row on this shard, [N]."""
    return mx.nd.max(z, axis=1)


def shifted_exp(z: mx.nd.NDArray, global_max: mx.nd.NDArray, out: mx.nd.NDArray | None = None) -> mx.nd.NDArray:
    """exp(z - M) [N, S]; with the global row max every entry is <= 1, so nothing overflows. out may be z."""
    e = mx.nd.broadcast_sub(z, global_max.expand_dims(1), out=out)
    return mx.nd.exp(e, out=e)


def sum_exp_and_target(e: mx.nd.NDArray, target_logit: mx.nd.NDArray) -> mx.nd.NDArray:
    """Packed [2, N]: local row sums of e, and the target logit z_y where the target is on this shard
    (0 elsewhere, so the global sum over ranks is exactly z_y)."""
    return mx.nd.stack(row_sum(e), target_logit)


def row_sum(x: mx.nd.NDArray) -> mx.nd.NDArray:
    """Sum of each row of [N, S], [N]: a product with a ones vector, which MXNet's BLAS runs several times
    faster on CPU than its own reduction over an axis."""
    ones = mx.nd.ones((x.shape[1], 1), ctx=x.context, dtype=x.dtype)
    return mx.nd.dot(x, ones).reshape((x.shape[0],))


def loss_per_row(packed_global: mx.nd.NDArray, global_max: mx.nd.NDArray) -> mx.nd.NDArray:
    """Cross-entropy of every row, [N], from the globally summed pack and the global max."""
    sum_exp, target = packed_global[0], packed_global[1]
    return mx.nd.log(sum_exp) - (target - global_max)


def logits_grad(e: mx.nd.NDArray, packed_global: mx.nd.NDArray, targets: mx.nd.NDArray | None, scale: float,
                out: mx.nd.NDArray | None = None) -> mx.nd.NDArray:
    """d(scale * sum_i loss_i)/dz = (softmax - onehot) * scale, [N, S]; purely local. targets: int64 [2, K]
    (row, column) of the target entries on this shard (None: none). out may be e itself."""
    dz = mx.nd.broadcast_mul(e, (scale / packed_global[0]).expand_dims(1), out=out)
    if targets is not None:
        set_entries(dz, targets, mx.nd.gather_nd(dz, targets) - scale)
    return dz


def set_entries(x: mx.nd.NDArray, index: mx.nd.NDArray, values: mx.nd.NDArray) -> None:
    """x[index[0, k], index[1, k]] = values[k] in place (the index pairs are distinct)."""
    mx.nd._internal._scatter_set_nd(lhs=x, rhs=values, indices=index, shape=x.shape, out=x)
