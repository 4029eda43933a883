"""The trusted computation the operator is compared with: dense margin softmax in float64 numpy.

One process, the whole FC layer (or the union of every rank's sampled centers), the whole batch, no
sharding, no sampling logic, no MXNet. Its gradient is checked against finite differences in
tests/single/test_reference.py, so it can stand as the oracle for everything else.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The exact margin's slope s*m1*sin(m1*theta + m2)/sin(theta) has no bound as theta -> 0 or pi; float64 can
# evaluate it down to theta ~ 1e-7, far below what a float32 cosine resolves (the operator: head/margin.py).
COS_CLAMP = 1.0 - 1e-14


@dataclass
class Dense:
    loss: float          # mean over rows
    dF: np.ndarray       # [N, D]
    dW: np.ndarray       # [K, D] for the centers passed in


def target_logit(c, s, m1, m2, m3):
    if m1 == 1.0 and m2 == 0.0:
        return s * (c - m3)
    return s * (np.cos(m1 * np.arccos(np.clip(c, -1.0, 1.0)) + m2) - m3)


def dense_loss(F, Y, W, classes, margins, s):
    """Mean margin cross-entropy; classes are the global ids of W's rows (sorted), Y global labels."""
    F, W = np.asarray(F, np.float64), np.asarray(W, np.float64)
    Fh = F / np.linalg.norm(F, axis=1, keepdims=True)
    Wh = W / np.linalg.norm(W, axis=1, keepdims=True)
    cos = Fh @ Wh.T
    col = np.searchsorted(classes, Y)
    assert np.all(classes[col] == Y), "every label must be among the classes"
    rows = np.arange(len(Y))
    z = s * cos
    z[rows, col] = target_logit(cos[rows, col], s, *margins)
    zmax = z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z - zmax).sum(axis=1)) + zmax[:, 0]
    return float(np.mean(lse - z[rows, col])), (Fh, Wh, cos, z, col)


def dense(F, Y, W, classes, margins, s) -> Dense:
    F, W = np.asarray(F, np.float64), np.asarray(W, np.float64)
    loss, (Fh, Wh, cos, z, col) = dense_loss(F, Y, W, classes, margins, s)
    N, rows = len(Y), np.arange(len(Y))
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    dz = p.copy()
    dz[rows, col] -= 1.0
    dz /= N
    dcos = s * dz
    m1, m2, m3 = margins
    c = cos[rows, col]
    if not (m1 == 1.0 and m2 == 0.0):
        cc = np.clip(c, -COS_CLAMP, COS_CLAMP)
        th = np.arccos(cc)
        slope = s * m1 * np.sin(m1 * th + m2) / np.sin(th)
        dcos[rows, col] = dz[rows, col] * slope
    dFh = dcos @ Wh
    dWh = dcos.T @ Fh
    dF = (dFh - Fh * np.sum(Fh * dFh, axis=1, keepdims=True)) / np.linalg.norm(F, axis=1, keepdims=True)
    dW = (dWh - Wh * np.sum(Wh * dWh, axis=1, keepdims=True)) / np.linalg.norm(W, axis=1, keepdims=True)
    return Dense(loss, dF, dW)


def sgd_momentum(w, mom, g, lr, mu, wd):
    """MXNet's sgd_mom_update rule, on copies: returns (w', mom')."""
    mom = mu * mom - lr * (g + wd * w)
    return w + mom, mom


def assert_close(actual, expected, rtol=1e-5, what=""):
    """Relative closeness at float32 precision: |a - e| <= rtol * (|e| + max|e|) elementwise."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    scale = np.max(np.abs(expected)) if expected.size else 0.0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale, err_msg=what)
