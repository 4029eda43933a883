"""Class-center sampling for one rank's shard (docs/design.md §3 step 4; Partial FC, arXiv 2010.05222 §3.2).

Each step keeps every positive class of the global batch that lives on this shard, and fills up to
max(int(r * count), #positives) rows with negatives drawn uniformly without replacement from the rest of
the shard. The cost is O(subset) per step: negatives come from rejection sampling against a scratch mask
that is reset row by row afterwards, never from a permutation of the whole shard (at 10 M classes per rank
that permutation was the reference trainer's bottleneck).

Randomness is a pure function of (seed, rank, step), so a resumed run samples exactly what an
uninterrupted one would have.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Sample:
    """One step's sampled subset of a shard.

    index:  int64 [S], sorted unique row ids within the shard (0 .. count-1).
    labels: int64 [N], each global label remapped to its row in `index`, or -1 when the class lives on
            another shard.
    full:   True when the subset is the whole shard (r = 1.0); callers may then skip the gather.
    positives: how many of the rows are classes of the global batch; the other len(index) - positives rows
            are drawn negatives (what the trainer reports: training/report.py, SamplingWindow).
    """
    index: np.ndarray
    labels: np.ndarray
    full: bool
    positives: int = 0


def check_labels(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Labels as int64 [N]; a label outside [0, num_classes) is an error, not a silently dropped row."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        # float32 cannot represent every class id above 2^24, so refuse floats rather than round them.
        raise TypeError(f"labels must be an integer array (int64), got {labels.dtype}")
    labels = labels.astype(np.int64, copy=False)
    if labels.size:
        bad = (labels < 0) | (labels >= num_classes)
        if bad.any():
            raise ValueError(f"label {int(labels[bad][0])} is outside [0, {num_classes}): "
                             f"it belongs to no shard (num_classes={num_classes})")
    return labels


def num_sampled(count: int, rate: float, num_positive: int) -> int:
    """Rows kept on a shard of `count` classes: max(int(rate * count), #positives), at most count, and at
    least 1 (a tiny shard at a tiny rate would otherwise enter the softmax with no columns at all)."""
    # The tiny relative nudge keeps products like 0.29 * 100 = 28.999999999999996 from flooring to 28.
    return min(count, max(int(rate * count * (1 + 1e-12)), num_positive, 1))


class CenterSampler:
    """Samples the centers one rank uses in a step. Holds one bool per shard row as scratch."""

    def __init__(self, start: int, count: int, num_classes: int, rate: float, seed: int = 0, rank: int = 0):
        if not 0.0 < rate <= 1.0:
            raise ValueError(f"sample rate must be in (0, 1], got {rate}")
        if count < 1 or start < 0 or start + count > num_classes:
            raise ValueError(f"shard [{start}, {start + count}) does not fit in [0, {num_classes})")
        self.start, self.count, self.num_classes = start, count, num_classes
        self.rate, self.seed, self.rank = rate, seed, rank
        self._taken = np.zeros(count, dtype=bool)  # all False between calls

    def sample(self, labels: np.ndarray, step: int) -> Sample:
        """Sample for the global batch `labels` (int64 [N], class ids in [0, C)) at training step `step`."""
        labels = check_labels(labels, self.num_classes)
        local = labels - self.start
        on_shard = (local >= 0) & (local < self.count)
        positives = np.unique(local[on_shard])  # sorted; at most N entries
        size = num_sampled(self.count, self.rate, positives.size)

        if size == self.count:
            index, full = np.arange(self.count, dtype=np.int64), True
        else:
            rng = np.random.default_rng([self.seed, self.rank, step])
            negatives = self._negatives(rng, positives, size - positives.size)
            # Both parts are sorted runs: a stable sort (timsort for integers) merges them in linear time.
            index, full = np.sort(np.concatenate([positives, negatives]), kind="stable"), False

        remapped = np.full(labels.shape, -1, dtype=np.int64)
        # index is sorted and holds every positive, so searchsorted finds each one's exact row.
        remapped[on_shard] = np.searchsorted(index, local[on_shard])
        return Sample(index=index, labels=remapped, full=full, positives=int(positives.size))

    def _negatives(self, rng: np.random.Generator, positives: np.ndarray, k: int) -> np.ndarray:
        """k distinct rows, uniform over the shard minus `positives`, sorted."""
        if k == 0:
            return np.empty(0, dtype=np.int64)
        free = self.count - positives.size
        if 2 * (positives.size + k) > self.count:
            # The subset is most of the shard anyway, so an O(count) choice is still O(subset).
            pool = np.setdiff1d(np.arange(self.count, dtype=np.int64), positives, assume_unique=True)
            return np.sort(rng.choice(pool, size=k, replace=False))
        # Row ids drawn as int32 where they fit: numpy sorts (and so deduplicates) them several times faster
        # than int64 (at N_local = 1e7, r = 0.1: about 11 ms instead of 60 for the 1.1 M draws).
        dtype = np.int32 if self.count <= np.iinfo(np.int32).max else np.int64
        taken = self._taken
        taken[positives] = True
        parts, need = [], k
        try:
            while need:
                # Less than half the shard is taken, so each draw is fresh with probability > 1/2.
                draws = rng.integers(0, self.count, size=int(need * self.count / (free - (k - need)) * 1.1) + 16,
                                     dtype=dtype)
                fresh = np.unique(draws[~taken[draws]])  # sorted
                if fresh.size > need:
                    # A uniform subset of a uniform random set is uniform: drop the surplus at random, keeping
                    # the rest in order.
                    keep = np.ones(fresh.size, dtype=bool)
                    keep[rng.choice(fresh.size, size=fresh.size - need, replace=False)] = False
                    fresh = fresh[keep]
                taken[fresh] = True
                parts.append(fresh.astype(np.int64))
                need -= fresh.size
        finally:
            # Reset only the rows touched, keeping the step O(subset).
            taken[positives] = False
            for p in parts:
                taken[p] = False
        return parts[0] if len(parts) == 1 else np.sort(np.concatenate(parts), kind="stable")
