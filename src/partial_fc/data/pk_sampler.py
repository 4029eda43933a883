"""P x K batches for metric losses (PFC_LOSS=triplet): P identities, K images of each, per rank.

Hermans et al., "In Defense of the Triplet Loss for Person Re-Identification" (arXiv 1703.07737): a batch of P
identities x K images gives every anchor K - 1 positives and the rest of the batch as negatives, so hard
triplets can be mined online inside it.

The global batch of a step is P * W identities drawn without replacement from the classes with images, the
same draw on every rank (np.random.default_rng([seed, step, 0x504B])); rank k takes the k-th block of P of
them. Each identity contributes K of its images, drawn without replacement when it has K or more, with
replacement otherwise. Like FaceIter's order, every batch is a pure function of (seed, step, rank, world
size), so a resumed run reads exactly what the uninterrupted run would have read.

Decoding, flips and bad-record handling are FaceIter's: this only replaces positions(step).
"""
from __future__ import annotations

import numpy as np

from .loader import FaceIter
from .records import DataError

_STREAM = 0x504B  # "PK": not the data order's or the flips' stream


class PKSampler:
    """Which images rank `rank` reads at each step: P = batch_size // images_per_identity identities x K images."""

    def __init__(self, labels: np.ndarray, batch_size: int, rank: int, world_size: int, images_per_identity: int,
                 seed: int = 0, rec_path: str = "the dataset"):
        if images_per_identity < 2 or batch_size % images_per_identity:
            raise ValueError(f"batch_size {batch_size} must be a multiple of images_per_identity "
                             f"{images_per_identity} >= 2")
        self.K, self.P = images_per_identity, batch_size // images_per_identity
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self._by_class = np.argsort(labels, kind="stable")
        classes, self._starts, self._counts = np.unique(np.asarray(labels)[self._by_class], return_index=True,
                                                        return_counts=True)
        needed = self.P * world_size
        if classes.size < needed:
            raise DataError(f"{rec_path}: {classes.size} identities, fewer than the {needed} a P x K batch needs "
                            f"({world_size} ranks x {self.P} identities)")

    def positions(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(image indices int64 [B], horizontal flip bool [B]) this rank reads at global step `step`; the K
        images of an identity are adjacent."""
        P, K = self.P, self.K
        rng = np.random.default_rng([self.seed, step, _STREAM])
        chosen = rng.choice(self._counts.size, size=P * self.world_size, replace=False)
        # Every rank draws every identity's images (the same stream everywhere), then keeps its own block.
        picks = np.empty((chosen.size, K), dtype=np.int64)
        for i, c in enumerate(chosen):
            n = int(self._counts[c])
            picks[i] = rng.choice(n, size=K, replace=n < K) + self._starts[c]
        flips = rng.integers(0, 2, size=picks.shape, dtype=np.uint8).astype(bool)
        mine = slice(self.rank * P, (self.rank + 1) * P)
        return self._by_class[picks[mine].reshape(-1)].astype(np.int64), flips[mine].reshape(-1)


class PKFaceIter(FaceIter):
    """FaceIter whose batches come from a PKSampler (labels [B] int64 come out as FaceIter's)."""

    def __init__(self, dataset, batch_size: int, rank: int, world_size: int, images_per_identity: int,
                 seed: int = 0, **kwargs):
        self.sampler = PKSampler(dataset.labels, batch_size, rank, world_size, images_per_identity, seed,
                                 dataset.rec_path)
        super().__init__(dataset, batch_size, rank, world_size, seed=seed, **kwargs)

    def positions(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        index, flips = self.sampler.positions(step)
        return index, (flips if self.flip else np.zeros(index.size, bool))
