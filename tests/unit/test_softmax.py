"""The local softmax pieces against numpy, run in place as the operator runs them."""
import mxnet as mx
import numpy as np
import pytest

from partial_fc.head import softmax


@pytest.mark.parametrize("with_targets", [True, False])
def test_in_place_softmax_pieces_equal_numpy(with_targets):
    rng = np.random.default_rng(0)
    N, S = 5, 11
    z = rng.normal(scale=8.0, size=(N, S))
    rows = np.array([0, 2, 3])
    cols = np.array([4, 0, 10])
    targets = mx.nd.array(np.stack([rows, cols]), dtype=np.int64) if with_targets else None
    M = z.max(axis=1) + 0.5  # a global max from other ranks may exceed the local one
    buf = mx.nd.array(z, dtype="float64")
    assert np.allclose(softmax.row_max(buf).asnumpy(), z.max(axis=1))
    e = softmax.shifted_exp(buf, mx.nd.array(M, dtype="float64"), out=buf)
    assert e is buf
    np.testing.assert_allclose(e.asnumpy(), np.exp(z - M[:, None]), rtol=1e-12)
    np.testing.assert_allclose(softmax.row_sum(e).asnumpy(), np.exp(z - M[:, None]).sum(axis=1), rtol=1e-12)
    target_logit = mx.nd.array(rng.normal(size=N), dtype="float64")
    packed = softmax.sum_exp_and_target(e, target_logit)
    assert packed.shape == (2, N)
    np.testing.assert_array_equal(packed[1].asnumpy(), target_logit.asnumpy())
    total = packed[0].asnumpy() * 1.5  # the global sum over ranks is larger than this shard's
    scale = 1.0 / 7
    dz = softmax.logits_grad(e, mx.nd.array(np.stack([total, packed[1].asnumpy()]), dtype="float64"), targets,
                             scale, out=e)
    assert dz is e
    expected = np.exp(z - M[:, None]) / total[:, None] * scale
    if with_targets:
        expected[rows, cols] -= scale
    np.testing.assert_allclose(dz.asnumpy(), expected, rtol=1e-12, atol=1e-15)
