"""The FC head's large elementwise passes over [N, S] cosines and [S, D] centers, each as one function.

On a CPU the float32 passes run as native operators (native/kernels.cc): one loop over the array each, at memory
speed. MXNet 1.9's stock CPU operators make a pass per operator and reduce over an axis several times slower than
memory allows, which at r = 1.0 and a million classes per rank made these passes slower than the step's matmuls
(docs/performance.md). Elsewhere (GPU contexts, float64 arrays in tests, a CPU without the compiled library) the
same math runs on stock operators. Pure local math: nothing here communicates.
"""
from __future__ import annotations

import mxnet as mx
import numpy as np

from .native import native_ops


def _native(x: mx.nd.NDArray):
    return native_ops(x.context) if np.dtype(x.dtype) == np.float32 else None


def _ones(n: int, like: mx.nd.NDArray) -> mx.nd.NDArray:
    return mx.nd.ones((n, 1), ctx=like.context, dtype=like.dtype)


def inv_row_norms(x: mx.nd.NDArray, out: mx.nd.NDArray | None = None) -> mx.nd.NDArray:
    """1 / |x_s| of each row of x [S, D], [S]."""
    ops = _native(x)
    if ops is not None:
        return ops.pfc_inv_row_norms(x, out=out)
    # |x|^2 as a product of the squares with a ones vector: MXNet's own row reductions are slow on CPU.
    sq = mx.nd.dot(mx.nd.square(x), _ones(x.shape[1], x)).reshape((x.shape[0],))
    return mx.nd.rsqrt(sq, out=out)


def scale_columns(x: mx.nd.NDArray, v: mx.nd.NDArray) -> mx.nd.NDArray:
    """x[:, s] *= v[s] in place, for x [N, S] and v [S]; returns x."""
    ops = _native(x)
    if ops is not None:
        return ops.pfc_scale_columns(x, v, out=x)
    return mx.nd.broadcast_mul(x, v.expand_dims(0), out=x)


def row_max(x: mx.nd.NDArray) -> mx.nd.NDArray:
    """Largest entry of each row of x [N, S], [N]."""
    ops = _native(x)
    return mx.nd.max(x, axis=1) if ops is None else ops.pfc_row_max(x)


def exp_row_sum(x: mx.nd.NDArray, scale: float, shift: mx.nd.NDArray) -> mx.nd.NDArray:
    """x = exp(scale * x - shift[:, None]) in place for x [N, S]; returns the row sums of the result, [N]."""
    ops = _native(x)
    if ops is not None:
        sums = mx.nd.empty((x.shape[0],), ctx=x.context)
        ops.pfc_exp_row_sum(x, shift, scale=scale, out=(x, sums))
        return sums
    mx.nd._internal._mul_scalar(x, scalar=scale, out=x)
    mx.nd.broadcast_sub(x, shift.expand_dims(1), out=x)
    mx.nd.exp(x, out=x)
    return mx.nd.dot(x, _ones(x.shape[1], x)).reshape((x.shape[0],))


def scaled_transpose(e: mx.nd.NDArray, a: mx.nd.NDArray, b: mx.nd.NDArray,
                     out: mx.nd.NDArray | None = None) -> mx.nd.NDArray:
    """(e * a[:, None] * b[None, :])^T [S, N] for e [N, S], a [N], b [S]. e may be overwritten."""
    ops = _native(e)
    if ops is not None:
        return ops.pfc_scaled_transpose(e, a, b, out=out)
    mx.nd.broadcast_mul(e, a.expand_dims(1), out=e)
    t = mx.nd.transpose(e, out=out)
    return mx.nd.broadcast_mul(t, b.expand_dims(1), out=t)


def tangent(g: mx.nd.NDArray, w: mx.nd.NDArray) -> mx.nd.NDArray:
    """g - w * (g.w) / (w.w) row by row, for g and w [S, D]: the part of g tangent to each row's sphere.

    The gradient of a loss through cos = f^.w / |w| with respect to w is this projection of
    g = dL/dcos^T . f^ / |w| (docs/design.md §3 step 8). Stock operators; a float32 CPU bank applies the same
    projection inside its native update (native/row_update.cc, `project`)."""
    ones = _ones(g.shape[1], g)
    gw = mx.nd.dot(g * w, ones)                    # [S, 1] row sums as products: MXNet's own are slow on CPU
    ww = mx.nd.dot(mx.nd.square(w), ones)
    return g - mx.nd.broadcast_mul(w, gw / ww)
