"""The margin's gradient against central finite differences, in float64."""
import mxnet as mx
import numpy as np
import pytest

from partial_fc.config import LOSSES
from partial_fc.head.margin import COS_CLAMP, Margin, margin_backward, margin_logits

MARGINS = {name: Margin(64.0, *m) for name, m in LOSSES.items()}


@pytest.mark.parametrize("name", list(MARGINS))
def test_target_slope_matches_numeric_derivative(name):
    m = MARGINS[name]
    c = np.linspace(-0.99, 0.99, 41)
    z, slope = m.target(mx.nd.array(c, dtype="float64"))
    h = 1e-6
    zp, _ = m.target(mx.nd.array(c + h, dtype="float64"))
    zm, _ = m.target(mx.nd.array(c - h, dtype="float64"))
    numeric = (zp.asnumpy() - zm.asnumpy()) / (2 * h)
    np.testing.assert_allclose(slope.asnumpy(), numeric, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["arcface", "combined"])
def test_clamp_keeps_logits_finite(name):
    m = MARGINS[name]
    c = mx.nd.array([1.0, 1.0 + 1e-7, -1.0, -1.0 - 1e-7, COS_CLAMP], dtype="float32")
    z, slope = m.target(c)
    assert np.all(np.isfinite(z.asnumpy())) and np.all(np.isfinite(slope.asnumpy()))
    assert np.all(slope.asnumpy()[:4] == 0)  # clamped: the function is flat there


@pytest.mark.parametrize("name", list(MARGINS))
def test_margin_logits_backward_matches_numeric_gradient(name):
    m = MARGINS[name]
    rng = np.random.default_rng(0)
    N, S = 6, 9
    cos = rng.uniform(-0.9, 0.9, size=(N, S))
    labels = np.array([0, 3, -1, 8, -1, 4], dtype=np.int64)
    g = rng.normal(size=(N, S))  # an arbitrary upstream gradient: check d<g, z>/dcos

    def objective(c):
        z, _ = margin_logits(mx.nd.array(c, dtype="float64"), mx.nd.array(labels, dtype="int64"), m)
        return float(np.sum(g * z.asnumpy()))

    z, cache = margin_logits(mx.nd.array(cos, dtype="float64"), mx.nd.array(labels, dtype="int64"), m)
    analytic = margin_backward(mx.nd.array(g, dtype="float64"), cache, m).asnumpy()
    numeric = np.zeros_like(cos)
    h = 1e-6
    for i in range(N):
        for j in range(S):
            cp, cm = cos.copy(), cos.copy()
            cp[i, j] += h
            cm[i, j] -= h
            numeric[i, j] = (objective(cp) - objective(cm)) / (2 * h)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-5)
    # Non-target entries are plain s * cos; targets carry the margin.
    zz = z.asnumpy()
    np.testing.assert_allclose(zz[2], 64.0 * cos[2])
    if name != "softmax":
        assert zz[1, 3] < 64.0 * cos[1, 3]


def test_known_values():
    c = mx.nd.array([0.5], dtype="float64")
    z, _ = MARGINS["arcface"].target(c)
    np.testing.assert_allclose(z.asnumpy(), 64 * np.cos(np.arccos(0.5) + 0.5))
    z, _ = MARGINS["cosface"].target(c)
    np.testing.assert_allclose(z.asnumpy(), 64 * (0.5 - 0.4))


def _dense_margin(cos, labels, m):
    """numpy: s * cos with z_y on each row's target column (rows with label -1 have none)."""
    z = m.s * cos
    rows = np.flatnonzero(labels >= 0)
    if rows.size == 0:
        return z, rows, np.zeros(0)
    z_y, slope = m.target(mx.nd.array(cos[rows, labels[rows]], dtype="float64"))
    z[rows, labels[rows]] = z_y.asnumpy()
    return z, rows, slope.asnumpy()


@pytest.mark.parametrize("labels", [[0, 3, -1, 8], [-1, -1, -1, -1]], ids=["some-targets", "no-target-here"])
def test_margin_in_place_equals_dense(labels):
    """The operator writes z into a separate buffer and dcos over dz; both must equal the dense formulas,
    also on a shard that holds none of the batch's classes (no target entries at all)."""
    m = MARGINS["arcface"]
    rng = np.random.default_rng(1)
    labels = np.array(labels, dtype=np.int64)
    cos = rng.uniform(-0.9, 0.9, size=(4, 9))
    dz = rng.normal(size=(4, 9))
    z_dense, rows, slope = _dense_margin(cos, labels, m)
    buf = mx.nd.empty(cos.shape, dtype="float64")
    z, cache = margin_logits(mx.nd.array(cos, dtype="float64"), labels, m, out=buf)
    assert z is buf
    np.testing.assert_allclose(z.asnumpy(), z_dense, rtol=1e-12)
    target_logit = np.zeros(4)
    target_logit[rows] = z_dense[rows, labels[rows]]
    np.testing.assert_allclose(cache.target_logit.asnumpy(), target_logit, rtol=1e-12)
    dcos_dense = m.s * dz
    dcos_dense[rows, labels[rows]] = dz[rows, labels[rows]] * slope
    work = mx.nd.array(dz, dtype="float64")
    dcos = margin_backward(work, cache, m, out=work)
    assert dcos is work
    np.testing.assert_allclose(dcos.asnumpy(), dcos_dense, rtol=1e-12)
