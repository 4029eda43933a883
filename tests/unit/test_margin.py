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
def test_clamp_keeps_logits_and_slopes_finite_and_the_pull_alive(name):
    m = MARGINS[name]
    c = mx.nd.array([1.0, 1.0 + 1e-7, -1.0, -1.0 - 1e-7, COS_CLAMP, -COS_CLAMP], dtype="float32")
    z, slope = m.target(c)
    z, slope = z.asnumpy(), slope.asnumpy()
    assert np.all(np.isfinite(z)) and np.all(np.isfinite(slope))
    # The logit is exact at +-1 (a cosine rounded past 1 counts as 1) ...
    np.testing.assert_allclose(z[:4], m.s * (np.cos(m.m1 * np.arccos([1, 1, -1, -1]) + m.m2) - m.m3), rtol=1e-6)
    # ... and beyond the clamp the slope is the clamp's own, not zero: the target's pull never stops.
    assert np.all(slope[:2] == slope[4]) and np.all(slope[2:4] == slope[5]) and np.all(slope[:2] > 0)


def _exact_slope(c, m):
    """float64: d/dc s * (cos(m1 * acos(c) + m2) - m3)."""
    theta = np.arccos(np.asarray(c, np.float64))
    return m.s * m.m1 * np.sin(m.m1 * theta + m.m2) / np.sin(theta)


SMALL_ANGLES = [1e-4, 2e-4, 3e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2]


@pytest.mark.parametrize("name", ["arcface", "combined"])
def test_slope_is_exact_for_every_float32_cosine_near_theta_0_and_pi(name):
    """docs/design.md §3, "The margin's slope near θ = 0": exact, to float32 rounding, at the cosine given,
    down to the smallest angle a float32 cosine resolves (3.45e-4 rad); the clamp's value below it."""
    m = MARGINS[name]
    for sign in (1.0, -1.0):
        theta = np.array(SMALL_ANGLES) if sign > 0 else np.pi - np.array(SMALL_ANGLES)
        c32 = np.cos(theta).astype(np.float32)
        # Every float32 cosine next to the end: 1 - k * 2^-24 (the angles 3.45e-4 * sqrt(k)).
        ladder = (sign * (1.0 - 2.0 ** -24 * np.arange(1, 200))).astype(np.float32)
        c32 = np.concatenate([c32, ladder])
        _, slope = m.target(mx.nd.array(c32, dtype="float32"))
        expected = _exact_slope(np.clip(c32.astype(np.float64), -COS_CLAMP, COS_CLAMP), m)
        np.testing.assert_allclose(slope.asnumpy(), expected, rtol=1e-5)
        resolved = np.abs(c32) < 1.0
        np.testing.assert_allclose(slope.asnumpy()[resolved], _exact_slope(c32[resolved], m), rtol=1e-5)


def test_the_operator_pulls_targets_at_small_angles_as_the_float64_reference_does():
    """The whole head at target angles 1e-4 .. 1e-2 against the dense float64 reference (the exact margin
    math) on the same float32 inputs. The head sees each angle only through its float32 cosine, which carries
    theta to about 2^-24 / theta (relative): the slope's 1 / sin(theta) turns a rounding of c of a few units of
    2^-24 into a relative error of about that over 1 - c = theta^2 / 2. Where c is more than a few such units
    from 1 (theta >= 1e-3) the gradients agree within that bound; below, the target is still pulled (the old
    clamp at 1 - 1e-6 gave no pull below 1.4e-3 rad: the center gradient was 100 % off)."""
    from partial_fc.dist import LocalComm
    from partial_fc.head.memory_bank import MemoryBank
    from partial_fc.head.operator import PartialFC
    from support.reference import dense

    C, D, N, s, margins = 6, 16, 4, 4.0, LOSSES["arcface"]
    ulp = 2.0 ** -24
    rng = np.random.default_rng(0)
    for theta in SMALL_ANGLES:
        W = rng.normal(size=(C, D))
        W /= np.linalg.norm(W, axis=1, keepdims=True)
        Y = np.arange(N)
        F = np.empty((N, D))
        for i, y in enumerate(Y):  # row i at exactly `theta` from its center
            u = rng.normal(size=D)
            u -= (u @ W[y]) * W[y]
            F[i] = np.cos(theta) * W[y] + np.sin(theta) * u / np.linalg.norm(u)
        F32, W32 = F.astype(np.float32), W.astype(np.float32)
        op = PartialFC(LocalComm(), C, D, Margin(s, *margins), 1.0, bank=MemoryBank(W32.copy()))
        out = op.forward_backward(mx.nd.array(F32), Y, 0)
        ref = dense(F32, Y, W32, np.arange(C), margins, s)
        # A cosine a few units of 2^-24 off moves theta by at most sqrt(2 * 4 * 2^-24), z_y by s times that.
        assert abs(out.loss - ref.loss) <= s * np.sqrt(8 * ulp), theta
        for what, got, want in (("centers", out.center_grad.asnumpy()[:N], ref.dW[:N]),
                                ("features", out.feature_grad.asnumpy(), ref.dF)):
            err = np.abs(got - want).max() / np.abs(want).max()
            bound = 1e-4 + 4 * ulp / theta ** 2 if theta >= 1e-3 else 0.9
            assert err < bound, f"{what} gradient at theta={theta}: relative error {err:.3g} >= {bound:.3g}"


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
