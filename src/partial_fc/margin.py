"""Additive angular / cosine margins (ArcFace arXiv 1801.07698, CosFace arXiv 1801.09414, DESIGN §3 step 5).

For a cosine c between a normalised feature and a normalised center:
    non-target logit  z   = s * c
    target logit      z_y = s * (cos(m1 * theta + m2) - m3),   theta = arccos(c)
ArcFace is (m1, m2, m3) = (1, 0.5, 0), CosFace (1, 0, 0.4); any combination is allowed.

Pure math on MXNet NDArrays, no communication. The gradient is the exact derivative of the function as
computed, including the clamp that keeps arccos away from |c| = 1 (zero slope where it clamps).
"""
from __future__ import annotations

from dataclasses import dataclass

import mxnet as mx

# arccos has an infinite slope at +-1; float32 cosines can land on or slightly past it.
COS_CLAMP = 1.0 - 1e-6


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
        cc = mx.nd.clip(c, -COS_CLAMP, COS_CLAMP)
        theta = mx.nd.arccos(cc)
        phi = self.m1 * theta + self.m2
        z = self.s * (mx.nd.cos(phi) - self.m3)
        # d cos(m1*acos(c) + m2)/dc = m1 * sin(phi) / sin(theta); zero where the clamp is active.
        slope = self.s * self.m1 * mx.nd.sin(phi) / mx.nd.sin(theta)
        slope = slope * (c == cc)
        return z, slope


@dataclass
class MarginCache:
    onehot: mx.nd.NDArray      # [N, S] one at each row's target column (zero row when off-shard)
    slope: mx.nd.NDArray       # [N] dz_y/dc_y
    has_target: mx.nd.NDArray  # [N] 1 where the row's class is on this shard


def margin_logits(cos: mx.nd.NDArray, labels: mx.nd.NDArray, margin: Margin):
    """Logits with the margin on each row's target column.

    cos:    float [N, S] cosines between all N features and the S sampled centers of this shard.
    labels: int64 [N] target column of each row in [0, S), or -1 when the row's class is on another shard.
    Returns (z [N, S], cache) where cache feeds margin_backward.
    """
    onehot = mx.nd.one_hot(labels, cos.shape[1], dtype=cos.dtype)  # all-zero rows for label -1
    has_target = labels >= 0
    c_y = mx.nd.pick(cos, mx.nd.maximum(labels, 0), axis=1)
    z_y, slope = margin.target(c_y)
    # Replace s*c_y by z_y on the target column only; rows without a target get a zero correction.
    correction = (z_y - margin.s * c_y) * has_target.astype(cos.dtype)
    z = margin.s * cos + onehot * correction.expand_dims(1)
    return z, MarginCache(onehot, slope, has_target)


def margin_backward(dz: mx.nd.NDArray, cache, margin: Margin) -> mx.nd.NDArray:
    """Gradient w.r.t. the cosines [N, S] given the gradient w.r.t. the logits [N, S]."""
    onehot, slope, has_target = cache.onehot, cache.slope, cache.has_target
    # Non-targets have slope s; targets have `slope`. Correct the target column in one broadcast.
    dz_y = mx.nd.sum(dz * onehot, axis=1)
    correction = dz_y * (slope - margin.s) * has_target.astype(dz.dtype)
    return margin.s * dz + onehot * correction.expand_dims(1)


# Named presets users pick with PFC_LOSS.
PRESETS = {
    "arcface": (1.0, 0.5, 0.0),
    "cosface": (1.0, 0.0, 0.4),
    "combined": (1.0, 0.3, 0.2),
    "softmax": (1.0, 0.0, 0.0),
}
