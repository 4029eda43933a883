"""The dense oracle is itself checked against finite differences, so it can judge the operator."""
import numpy as np
import pytest

from support.reference import dense, dense_loss


@pytest.mark.parametrize("margins", [(1.0, 0.5, 0.0), (1.0, 0.0, 0.4), (1.0, 0.3, 0.2)])
def test_dense_gradients_match_finite_differences(margins):
    rng = np.random.default_rng(0)
    N, D, K = 5, 4, 7
    F, W = rng.normal(size=(N, D)), rng.normal(size=(K, D))
    classes = np.arange(100, 100 + K)
    Y = rng.choice(classes, size=N)
    s = 16.0
    ref = dense(F, Y, W, classes, margins, s)
    h = 1e-6
    for X, grad in ((F, ref.dF), (W, ref.dW)):
        numeric = np.zeros_like(X)
        for idx in np.ndindex(X.shape):
            Xp, Xm = X.copy(), X.copy()
            Xp[idx] += h
            Xm[idx] -= h
            args_p = (Xp, W) if X is F else (F, Xp)
            args_m = (Xm, W) if X is F else (F, Xm)
            lp = dense_loss(args_p[0], Y, args_p[1], classes, margins, s)[0]
            lm = dense_loss(args_m[0], Y, args_m[1], classes, margins, s)[0]
            numeric[idx] = (lp - lm) / (2 * h)
        np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-7)
