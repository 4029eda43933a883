"""The local softmax pieces and the head's elementwise kernels against float64 numpy, in place as the operator
runs them: float64 arrays take the stock operators, float32 ones the native kernels on CPU (and the stock ones
with the library switched off)."""
import mxnet as mx
import numpy as np
import pytest

from partial_fc.head import kernels, native, softmax


@pytest.fixture(params=["float64 stock", "float32 native", "float32 stock"])
def flavour(request, monkeypatch):
    dtype, path = request.param.split()
    if path == "native":
        assert native.native_ops(mx.cpu()) is not None, "the native kernels are not built"
    else:
        monkeypatch.setattr(native, "_native", {"cpu": None})
    return dtype


def _tolerance(dtype):
    return dict(rtol=1e-12, atol=1e-15) if dtype == "float64" else dict(rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("with_targets", [True, False])
def test_softmax_pieces_equal_numpy(with_targets, flavour):
    rng = np.random.default_rng(0)
    N, S, s = 5, 1500, 6.0           # S past the kernels' 1024-column blocks
    x = rng.uniform(-1, 1, size=(N, S))
    rows, cols = np.array([0, 2, 3]), np.array([4, 0, 1499])
    targets = mx.nd.array(np.stack([rows, cols]), dtype=np.int64) if with_targets else None
    slope = mx.nd.array([3.0, -2.0, 7.5], dtype=flavour) if with_targets else None
    x = x.astype(flavour).astype(np.float64)  # the values the array holds
    buf = mx.nd.array(x, dtype=flavour)
    np.testing.assert_allclose(softmax.row_max(buf).asnumpy(), x.max(axis=1), **_tolerance(flavour))
    M = s * x.max(axis=1) + 0.5      # a global max from other ranks may exceed the local one
    sums = softmax.exp_and_row_sums(buf, s, mx.nd.array(M, dtype=flavour))
    e = np.exp(s * x - M[:, None])
    np.testing.assert_allclose(buf.asnumpy(), e, **_tolerance(flavour))
    np.testing.assert_allclose(sums.asnumpy(), e.sum(axis=1), **_tolerance(flavour))
    target_logit = mx.nd.array(rng.normal(size=N), dtype=flavour)
    packed = softmax.pack(sums, target_logit)
    assert packed.shape == (2, N)
    np.testing.assert_array_equal(packed[1].asnumpy(), target_logit.asnumpy())
    total = sums.asnumpy().astype(np.float64) * 1.5   # the global sum over ranks is larger than this shard's
    w_inv = rng.uniform(0.5, 2.0, size=S).astype(flavour)
    scale = 1.0 / 7
    e_held = buf.asnumpy().astype(np.float64)
    dcos_t = softmax.cosine_grad_t(buf, mx.nd.array(np.stack([total, packed[1].asnumpy()]), dtype=flavour),
                                   scale, s, mx.nd.array(w_inv, dtype=flavour), targets, slope,
                                   out=mx.nd.empty((S, N), dtype=flavour))
    dz = e_held / total[:, None] * scale
    dcos = s * dz
    if with_targets:
        dcos[rows, cols] = slope.asnumpy() * (dz[rows, cols] - scale)
    expected = (dcos * w_inv.astype(np.float64)[None, :]).T
    np.testing.assert_allclose(dcos_t.asnumpy(), expected, **_tolerance(flavour))


def test_kernels_equal_numpy(flavour):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((300, 37)).astype(flavour)
    g = rng.standard_normal((300, 37)).astype(flavour)
    w64, g64 = w.astype(np.float64), g.astype(np.float64)
    out = mx.nd.zeros((310,), dtype=flavour)
    kernels.inv_row_norms(mx.nd.array(w, dtype=flavour), out=out[5:305])   # into a view, as the operator does
    np.testing.assert_allclose(out.asnumpy()[5:305], 1 / np.linalg.norm(w64, axis=1), **_tolerance(flavour))
    assert not out.asnumpy()[:5].any() and not out.asnumpy()[305:].any()
    x = rng.standard_normal((4, 300)).astype(flavour)
    X = mx.nd.array(x, dtype=flavour)
    assert kernels.scale_columns(X, mx.nd.array(w[:, 0], dtype=flavour)) is X
    np.testing.assert_allclose(X.asnumpy(), x.astype(np.float64) * w64[:, 0], **_tolerance(flavour))
    t = kernels.tangent(mx.nd.array(g, dtype=flavour), mx.nd.array(w, dtype=flavour)).asnumpy()
    expected = g64 - w64 * ((g64 * w64).sum(1) / (w64 * w64).sum(1))[:, None]
    np.testing.assert_allclose(t, expected, rtol=1e-10 if flavour == "float64" else 1e-4, atol=1e-5)


def test_native_exp_is_within_two_ulp_of_float64():
    """The native exp (kernels.cc) over the range a shifted logit takes, against float64 (measured: 2.06 * 2^-23
    at worst); 0 far below."""
    assert native.native_ops(mx.cpu()) is not None, "the native kernels are not built"
    x = np.linspace(-87.0, 0.0, 200_001, dtype=np.float32)[None, :]
    X = mx.nd.array(x)
    kernels.exp_row_sum(X, 1.0, mx.nd.zeros((1,)))
    exact = np.exp(x.astype(np.float64))
    rel = np.abs(X.asnumpy() / exact - 1)
    assert rel.max() < 2.5 * 2.0 ** -23, rel.max()   # numpy's own float32 exp: 1.6 * 2^-23
    far = mx.nd.array([[-200.0, -100.0, -88.0]])
    kernels.exp_row_sum(far, 1.0, mx.nd.zeros((1,)))
    assert np.all(far.asnumpy() <= 1.7e-38)
