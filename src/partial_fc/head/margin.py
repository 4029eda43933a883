"""Additive angular / cosine margins (ArcFace arXiv 1801.07698, CosFace arXiv 1801.09414, docs/design.md §3 step 5).

For a cosine c between a normalised feature and a normalised center:
    non-target logit  z   = s * c
    target logit      z_y = s * (cos(m1 * theta + m2) - m3),   theta = arccos(c)
ArcFace is (m1, m2, m3) = (1, 0.5, 0), CosFace (1, 0, 0.4); any combination is allowed.

Pure math on MXNet NDArrays, no communication. The target logit is exact for every c in [-1, 1]; its slope
dz_y/dc = s * m1 * sin(m1 * theta + m2) / sin(theta) is exact wherever a float32 cosine can tell theta from 0
or pi, and held at its value there beyond (docs/design.md §3, "The margin's slope near θ = 0").
"""
from __future__ import annotations

from dataclasses import dataclass

import mxnet as mx
import numpy as np

from .softmax import set_entries

# The slope ~ s * m1 * sin(m2) / theta grows without bound as theta -> 0 (and as theta -> pi). The largest
# float32 below 1, 1 - 2^-24, is the cosine of theta = 3.45e-4 rad, the smallest angle a float32 cosine can
# express: every cosine a float32 step computes short of +-1 gets its exact slope, and +-1 itself (any
# theta below ~2.4e-4, or a cosine rounded past 1) the slope at the clamp, finite and pulling the same way.
# (A clamp at 1 - 1e-6 with zero slope beyond it stopped the target's pull below theta = 1.4e-3.)
COS_CLAMP = 1.0 - 2.0 ** -24


@dataclass(frozen=True)
class Margin:
    s: float = 64.0
    m1: float = 1.0
    m2: float = 0.5
    m3: float = 0.0

    @property
    def is_cosine_only(self) -> bool:
        """True when the target logit is affine in c (CosFace / plain softmax): no arccos needed."""
        return self.m1 == 1.0 and self.m2 == 0.0

    def target(self, c: mx.nd.NDArray) -> tuple[mx.nd.NDArray, mx.nd.NDArray]:
        """Target logits z_y and dz_y/dc for target cosines c [N] (elementwise)."""
        if self.is_cosine_only:
            return self.s * (c - self.m3), mx.nd.full(c.shape, self.s, ctx=c.context, dtype=c.dtype)
        # The logit at the cosine as given (rounded past +-1 counts as +-1): the loss stays exact near 0 and pi.
        z = self.s * (mx.nd.cos(self.m1 * mx.nd.arccos(mx.nd.clip(c, -1.0, 1.0)) + self.m2) - self.m3)
        # d cos(m1*acos(c) + m2)/dc = m1 * sin(phi) / sin(theta), evaluated at the clamped cosine: exact for
        # |c| <= COS_CLAMP, the clamp's (finite, non-zero) value beyond.
        # sin(theta) as sqrt((1 - c)(1 + c)): 1 -+ c is exact in float32 near +-1, sin(arccos(c)) is not near -1.
        cc = mx.nd.clip(c, -COS_CLAMP, COS_CLAMP)
        slope = self.s * self.m1 * mx.nd.sin(self.m1 * mx.nd.arccos(cc) + self.m2) / mx.nd.sqrt((1 - cc) * (1 + cc))
        return z, slope


@dataclass
class MarginCache:
    """The target entries of a shard's [N, S] logits: only rows whose class is on this shard have one."""
    targets: mx.nd.NDArray | None  # int64 [2, K] (row, column) of each target entry; None when K = 0
    slope: mx.nd.NDArray | None    # [K] dz_y/dc_y at those entries
    target_logit: mx.nd.NDArray    # [N] z_y where the row's target is on this shard, 0 elsewhere


def margin_logits(cos: mx.nd.NDArray, labels, margin: Margin, out: mx.nd.NDArray | None = None):
    """Logits with the margin on each row's target column: s * cos everywhere, z_y on the target entries.

    cos:    float [N, S] cosines between all N features and the S sampled centers of this shard.
    labels: int64 [N] (numpy or NDArray) target column of each row in [0, S), or -1 when the row's class is
            on another shard.
    out:    [N, S] array to write the logits into (a new one by default).
    Returns (z [N, S], cache) where cache feeds margin_backward. The targets are written in place, so no
    [N, S] one-hot exists: at 10 M classes each [N, S] array is hundreds of MB.
    """
    z = cos.copyto(out) if out is not None else cos.copy()
    cache = mark_targets(z, labels, margin)
    return mx.nd._internal._mul_scalar(z, scalar=margin.s, out=z), cache


def margin_backward(dz: mx.nd.NDArray, cache: MarginCache, margin: Margin,
                    out: mx.nd.NDArray | None = None) -> mx.nd.NDArray:
    """Gradient w.r.t. the cosines [N, S] given the gradient w.r.t. the logits [N, S]: s * dz, and
    slope * dz_y on the target entries. out may be dz itself (then dz is overwritten)."""
    dz_y = None if cache.targets is None else mx.nd.gather_nd(dz, cache.targets)  # read before any overwrite
    dcos = mx.nd._internal._mul_scalar(dz, scalar=margin.s, out=out)
    if dz_y is not None:
        set_entries(dcos, cache.targets, dz_y * cache.slope)
    return dcos


def mark_targets(cos: mx.nd.NDArray, labels, margin: Margin) -> MarginCache:
    """The margin in place, for the operator: each target entry of cos [N, S] becomes z_y / s, so that s * cos is
    the whole logit matrix of margin_logits without a second [N, S] array. labels as in margin_logits.

    Returns the cache (targets, slope, target_logit [N]: z_y where the row's target is on this shard, 0
    elsewhere, what the packed allreduce sums over ranks) that margin_backward and the operator's fused
    softmax gradient read."""
    labels = np.asarray(labels.asnumpy() if isinstance(labels, mx.nd.NDArray) else labels)
    n = cos.shape[0]
    rows = np.flatnonzero(labels >= 0)
    if rows.size == 0:
        return MarginCache(None, None, mx.nd.zeros((n,), ctx=cos.context, dtype=cos.dtype))
    targets = mx.nd.array(np.stack([rows, labels[rows]]), ctx=cos.context, dtype=np.int64)
    z_y, slope = margin.target(mx.nd.gather_nd(cos, targets))
    set_entries(cos, targets, z_y / margin.s)
    return MarginCache(targets, slope, mx.nd.scatter_nd(z_y, targets[0:1], shape=(n,)))
