"""PFC_LOSS=triplet: the batch-hard margin loss and its gradient against a direct computation and finite
differences, the head's share of the global batch, and the P x K sampler's invariants."""
import numpy as np
import pytest

from partial_fc.data.pk_sampler import PKSampler
from partial_fc.head.triplet import TripletHead, triplet_loss


def batch(seed=0, P=4, K=3, D=5):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((P * K, D)), np.repeat(np.arange(P) * 7, K)


def direct_loss(F, labels, margin):
    """The definition, anchor by anchor, in float64."""
    E = F / np.linalg.norm(F, axis=1, keepdims=True)
    total = 0.0
    for a in range(len(E)):
        d = ((E - E[a]) ** 2).sum(axis=1)
        pos = [d[p] for p in range(len(E)) if p != a and labels[p] == labels[a]]
        neg = [d[n] for n in range(len(E)) if labels[n] != labels[a]]
        total += max(max(pos) - min(neg) + margin, 0.0)
    return total / len(E)


@pytest.mark.parametrize("margin", [0.0, 0.3, 2.0])
def test_loss_and_gradient_match_the_definition_and_finite_differences(margin):
    F, labels = batch()
    loss, grad = triplet_loss(F, labels, margin)
    assert loss == pytest.approx(direct_loss(F, labels, margin), rel=1e-12, abs=1e-15)
    h = 1e-6
    numeric = np.zeros_like(F)
    for i in range(F.shape[0]):
        for j in range(F.shape[1]):
            up, down = F.copy(), F.copy()
            up[i, j] += h
            down[i, j] -= h
            numeric[i, j] = (direct_loss(up, labels, margin) - direct_loss(down, labels, margin)) / (2 * h)
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-8)


def test_a_large_margin_makes_every_anchor_active_and_scale_does_not_matter():
    F, labels = batch(1)
    loss, grad = triplet_loss(F, labels, 10.0)
    assert loss > 10.0 - 4.0
    loss2, grad2 = triplet_loss(F * 3.0, labels, 10.0)   # normalised embeddings: the scale only divides the gradient
    assert loss2 == pytest.approx(loss) and np.allclose(grad2 * 3.0, grad)


def test_batches_without_positives_or_negatives_are_refused():
    with pytest.raises(ValueError, match="at least two images"):
        triplet_loss(np.eye(3), np.array([0, 0, 1]), 0.3)
    with pytest.raises(ValueError, match="two identities"):
        triplet_loss(np.eye(3), np.array([0, 0, 0]), 0.3)


def test_the_head_returns_its_rows_of_the_global_gradient():
    import mxnet as mx
    from partial_fc import dist

    F, labels = batch(2)
    head = TripletHead(dist.LocalComm(), F.shape[1], 0.3)
    out = head.forward_backward(mx.nd.array(F), labels, step=0)
    loss, grad = triplet_loss(F.astype(np.float32), labels, 0.3)
    assert out.loss == pytest.approx(loss)
    np.testing.assert_allclose(out.feature_grad.asnumpy(), grad, rtol=1e-5, atol=1e-7)
    w, m = head.bank.numpy()
    assert w.shape == (0, F.shape[1]) and head.bank.dtype == "float32"


def positions(labels, W, B, K, step, seed=0):
    return [PKSampler(labels, B, rank, W, K, seed).positions(step) for rank in range(W)]


def test_pk_batches_hold_p_distinct_identities_of_k_images_across_the_global_batch():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(30), rng.integers(1, 9, size=30))   # some identities have fewer than K images
    rng.shuffle(labels)
    W, B, K = 3, 8, 4
    for step in range(5):
        parts = positions(labels, W, B, K, step)
        ids = []
        for index, flips in parts:
            assert index.shape == (B,) and flips.shape == (B,)
            groups = labels[index].reshape(B // K, K)
            assert (groups == groups[:, :1]).all()          # K images of one identity, adjacent
            ids += list(groups[:, 0])
            for g, idx in zip(groups[:, 0], index.reshape(B // K, K)):
                if (labels == g).sum() >= K:
                    assert len(set(idx)) == K                 # without replacement when it has K images
        assert len(set(ids)) == W * B // K                   # distinct identities over the global batch
    again = positions(labels, W, B, K, 3)
    for (a, fa), (b, fb) in zip(positions(labels, W, B, K, 3), again):
        assert (a == b).all() and (fa == fb).all()            # a pure function of (seed, step, rank)


def test_too_few_identities_is_a_data_error():
    from partial_fc.data.records import DataError
    with pytest.raises(DataError, match="3 identities, fewer than the 4"):
        PKSampler(np.array([0, 0, 1, 1, 2, 2]), 4, 0, 2, 2)
    with pytest.raises(ValueError, match="multiple of images_per_identity"):
        PKSampler(np.array([0, 0, 1, 1]), 5, 0, 1, 2)
