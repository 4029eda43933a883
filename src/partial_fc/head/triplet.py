"""PFC_LOSS=triplet: a margin triplet loss on L2-normalised embeddings with online batch-hard mining, no FC head.

Schroff et al., "FaceNet" (arXiv 1503.03832) for the loss, Hermans et al. (arXiv 1703.07737) for the mining:
for every anchor a of the global batch (P x K images per rank, data/pk_sampler.py), its hardest positive
(the farthest image of its identity) and its hardest negative (the nearest image of another identity),

    L = (1/N) sum_a max(d(a, p_a) - d(a, n_a) + margin, 0),   d(x, y) = |x^ - y^|^2 = 2 - 2 cos(x, y)

with x^ = x / |x|: the squared distance of the normalised embeddings, which verification thresholds too.
This is arcface_mxnet's fine-tuning mode (there with triplets mined on the host); here the mining is the
step itself, over the global batch.

The features are allgathered as the Partial FC head's are (`pfc.features`, `pfc.labels`), so every rank
computes the same loss and the same gradient for all N rows from the same numbers and keeps its own B rows:
no further collective. As with the FC head, the backbone's gradient is then the SUM over ranks of what each
back-propagates (trainer.init_optimizer's rescale_grad = W). Where a maximum or minimum is tied, the first
index carries the (sub)gradient.
"""
from __future__ import annotations

from dataclasses import dataclass

import mxnet as mx
import numpy as np


def triplet_loss(features: np.ndarray, labels: np.ndarray, margin: float) -> tuple[float, np.ndarray]:
    """(L, dL/dF) for features [N, D] (float64 inside) and labels [N] (every label at least twice)."""
    F = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    N = F.shape[0]
    norm = np.maximum(np.linalg.norm(F, axis=1, keepdims=True), 1e-12)
    E = F / norm
    d = np.maximum(2.0 - 2.0 * (E @ E.T), 0.0)
    same = labels[:, None] == labels[None, :]
    if (same.sum(axis=1) < 2).any():
        raise ValueError("every identity of a triplet batch needs at least two images (PFC_TRIPLET_IMAGES >= 2)")
    if same.all():
        raise ValueError("a triplet batch needs at least two identities")
    rows = np.arange(N)
    positive = np.argmax(np.where(same & ~np.eye(N, dtype=bool), d, -np.inf), axis=1)
    negative = np.argmin(np.where(same, np.inf, d), axis=1)
    hinge = d[rows, positive] - d[rows, negative] + margin
    active = hinge > 0
    loss = float(np.where(active, hinge, 0.0).sum() / N)
    # d(a, b) = |e_a - e_b|^2: d/de_a = 2 (e_a - e_b), d/de_b = -2 (e_a - e_b).
    dE = np.zeros_like(E)
    a = rows[active]
    p, n = positive[active], negative[active]
    toward_p, toward_n = 2.0 * (E[a] - E[p]) / N, 2.0 * (E[a] - E[n]) / N
    np.add.at(dE, a, toward_p - toward_n)
    np.add.at(dE, p, -toward_p)
    np.add.at(dE, n, toward_n)
    # Through the normalisation e = f / |f|.
    dF = (dE - E * np.sum(E * dE, axis=1, keepdims=True)) / norm
    return loss, dF


@dataclass
class TripletStep:
    loss: float
    feature_grad: mx.nd.NDArray   # float32 [B, D], dL/df for this rank's rows


class _NoCenters:
    """What the checkpointer saves for a head without centers: a float32 shard of zero rows."""
    dtype = "float32"

    def __init__(self, dim: int):
        self._empty = np.zeros((0, dim), dtype=np.float32)

    def numpy(self):
        return self._empty, self._empty


class TripletHead:
    """The head of a triplet run, with the operator's call pattern: forward_backward(features, labels, step) and
    update(out, lr) (a no-op: nothing here learns)."""

    start = count = 0  # this rank holds no class centers

    def __init__(self, comm, embedding_size: int, margin: float, *, ctx=None):
        self.comm, self.embedding_size, self.margin = comm, embedding_size, margin
        self.ctx = ctx or mx.cpu()
        self.bank = _NoCenters(embedding_size)

    def forward_backward(self, features: mx.nd.NDArray, labels: np.ndarray, step: int) -> TripletStep:
        B = features.shape[0]
        # Horovod: the global batch, rank 0's rows first (the FC head's exchange and names).
        F = self.comm.allgather(features, "pfc.features").asnumpy()
        Y = self.comm.allgather(mx.nd.array(np.asarray(labels, np.int64), dtype=np.int64), "pfc.labels").asnumpy()
        if F.shape[0] != B * self.comm.size:
            raise ValueError(f"the ranks' batches differ in size ({F.shape[0]} rows for {self.comm.size} x {B})")
        loss, dF = triplet_loss(F, Y, self.margin)
        mine = dF[self.comm.rank * B:(self.comm.rank + 1) * B]
        return TripletStep(loss, mx.nd.array(mine.astype(np.float32), ctx=self.ctx))

    def update(self, out: TripletStep, learning_rate: float) -> None:
        pass
