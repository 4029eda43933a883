"""Softmax cross-entropy over logits whose columns are split across ranks: the local pieces.

The distributed operator (partial_fc.py) places exactly two collectives between these functions:
    M      = allreduce_max(row_max(z))
    S, t   = allreduce_sum(pack(sum_exp(z, M), target_logit(z, y)))
    loss_i = log S_i - (t_i - M_i)
    dz     = (exp(z - M) / S - onehot(y)) * scale            (no communication)
Every function here is local math on MXNet NDArrays; none of them communicates.
"""
from __future__ import annotations

import mxnet as mx


def row_max(z: mx.nd.NDArray) -> mx.nd.NDArray:
    """Largest logit of each row on this shard, [N]."""
    return mx.nd.max(z, axis=1)


def shifted_exp(z: mx.nd.NDArray, global_max: mx.nd.NDArray) -> mx.nd.NDArray:
    """exp(z - M) [N, S]; with the global row max every entry is <= 1, so nothing overflows."""
    return mx.nd.exp(mx.nd.broadcast_sub(z, global_max.expand_dims(1)))


def sum_exp_and_target(e: mx.nd.NDArray, z: mx.nd.NDArray, onehot: mx.nd.NDArray) -> mx.nd.NDArray:
    """Packed [2, N]: local row sums of e, and the target logit z_y where the target is on this shard
    (0 elsewhere, so the global sum over ranks is exactly z_y)."""
    return mx.nd.stack(mx.nd.sum(e, axis=1), mx.nd.sum(z * onehot, axis=1))


def loss_per_row(packed_global: mx.nd.NDArray, global_max: mx.nd.NDArray) -> mx.nd.NDArray:
    """Cross-entropy of every row, [N], from the globally summed pack and the global max."""
    sum_exp, target = packed_global[0], packed_global[1]
    return mx.nd.log(sum_exp) - (target - global_max)


def logits_grad(e: mx.nd.NDArray, packed_global: mx.nd.NDArray, onehot: mx.nd.NDArray,
                scale: float) -> mx.nd.NDArray:
    """d(scale * sum_i loss_i)/dz = (softmax - onehot) * scale, [N, S]; purely local."""
    p = mx.nd.broadcast_div(e, packed_global[0].expand_dims(1))
    return (p - onehot) * scale
