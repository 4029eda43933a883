"""Center imprinting: each class center starts as the normalised mean embedding of the class's training images.

Qi et al., "Low-Shot Learning with Imprinted Weights", CVPR 2018 (arXiv 1712.07136): under a trained
backbone, the normalised mean embedding of a class is already a good classifier weight for it, so a
fine-tuning run starts with a head that agrees with its backbone instead of random centers.

The pass is sharded like the head (docs/design.md §3 step 1): every rank embeds its own part of the training
images (the caller does that, training/imprinting.py) and hands its normalised embeddings and labels here.
The class sums must reach the rank that owns the class. They travel in rounds of `rows` shard rows: in
round j every rank packs, for each rank k, the sums of k's shard rows [j*rows, (j+1)*rows) (zeros where k's
shard is shorter) with one count column, [W * rows, D + 1] in all, and one reduce-scatter
(`pfc.imprint_sums`) leaves rank k exactly its own block, summed over every rank. Memory stays bounded at
any class count (one round's buffer, at most IMPRINT_ROUND_VALUES floats), every rank runs the same number
of rounds (a function of C and W), and no rank ever holds another rank's centers.

Classes without any image keep the centers they had (the seed's random ones). Momentum stays zero.
"""
from __future__ import annotations

import math

import mxnet as mx
import numpy as np

from .memory_bank import MemoryBank
from .sharding import shard_range

IMPRINT_ROUND_VALUES = 1 << 22  # floats in one round's reduce-scatter buffer (16 MB)


def rows_per_round(num_classes: int, world_size: int, dim: int, budget: int = IMPRINT_ROUND_VALUES) -> int:
    """Shard rows each rank receives per round, so that the [W * rows, D + 1] buffer holds <= budget floats."""
    largest = shard_range(num_classes, world_size, 0)[1]  # rank 0's shard is never smaller than another's
    return max(1, min(largest, budget // (world_size * (dim + 1))))


def class_sums(embeddings: np.ndarray, labels: np.ndarray, lo: int, hi: int, out: np.ndarray) -> None:
    """out[c - lo, :D] = sum of the embeddings of class c, out[c - lo, D] = their count, for c in [lo, hi).

    embeddings float32 [n, D] and labels int64 [n] sorted by label (so a class range is one slice); out
    float32 [hi - lo, D + 1], overwritten."""
    out[:] = 0
    a, b = np.searchsorted(labels, [lo, hi])
    if a == b:
        return
    ids, starts, counts = np.unique(labels[a:b], return_index=True, return_counts=True)
    out[ids - lo, :-1] = np.add.reduceat(embeddings[a:b], starts, axis=0)
    out[ids - lo, -1] = counts


def imprint(bank: MemoryBank, comm, num_classes: int, embeddings: np.ndarray, labels: np.ndarray, *,
            rows: int | None = None, progress=None) -> int:
    """Overwrite this rank's centers with the normalised class means of every rank's embeddings.

    bank: this rank's shard, shard_range(num_classes, comm.size, comm.rank); embeddings float32 [n, D] and
    labels int64 [n]: this rank's part of the images, L2-normalised (any part: each image on exactly one
    rank). rows: shard rows per round (default rows_per_round()). progress(done, total) after each round.
    Every rank must call it (one collective per round). Returns how many of this rank's classes had images.
    """
    W, D = comm.size, bank.shape[1]
    if embeddings.ndim != 2 or embeddings.shape[1] != D or len(labels) != len(embeddings):
        raise ValueError(f"embeddings must be [n, {D}] with one label each, got {embeddings.shape} and "
                         f"{len(labels)} labels")
    order = np.argsort(labels, kind="stable")
    labels = np.asarray(labels, dtype=np.int64)[order]
    embeddings = np.ascontiguousarray(embeddings[order], dtype=np.float32)
    rows = rows or rows_per_round(num_classes, W, D)
    shards = [shard_range(num_classes, W, k) for k in range(W)]
    rounds = math.ceil(shards[0][1] / rows)
    start, count = shards[comm.rank]
    send = np.empty((W * rows, D + 1), dtype=np.float32)
    filled = 0
    for j in range(rounds):
        for k, (s, c) in enumerate(shards):
            lo, hi = s + min(j * rows, c), s + min((j + 1) * rows, c)
            block = send[k * rows:(k + 1) * rows]
            class_sums(embeddings, labels, lo, hi, block[:hi - lo])
            block[hi - lo:] = 0
        # Horovod: every rank runs the same rounds; rank k receives the sums of its own rows of this round.
        mine = comm.reducescatter(mx.nd.array(send), "pfc.imprint_sums").asnumpy()
        n = min((j + 1) * rows, count) - min(j * rows, count)
        seen = np.flatnonzero(mine[:n, -1] > 0)
        if seen.size:
            sums = mine[seen, :-1]
            # The normalised mean is the normalised sum.
            centers = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), np.float32(1e-12))
            bank.write_rows(j * rows + seen, centers)
            filled += seen.size
        if progress is not None:
            progress(j + 1, rounds)
    return filled
