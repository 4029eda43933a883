"""Which contiguous range of class ids each rank owns (docs/design.md §3 step 1).

The split is exact: rank k owns C // W classes, plus one for the first C % W ranks, so the shards tile
[0, C) with no padding classes. Everything that needs a class range (sampler, memory bank, checkpoints,
re-sharding on resume) asks this one function.
"""
from __future__ import annotations

import numpy as np


def shard_range(num_classes: int, world_size: int, rank: int) -> tuple[int, int]:
    """Return (start, count) of the class ids owned by `rank` out of `world_size` ranks."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside [0, {world_size})")
    if num_classes < world_size:
        # An empty shard would make a rank's softmax meaningless and its bank zero-sized.
        raise ValueError(f"{num_classes} classes cannot be split over {world_size} ranks (need >= 1 per rank)")
    base, extra = divmod(num_classes, world_size)
    start = rank * base + min(rank, extra)
    return start, base + (1 if rank < extra else 0)


def owner_of(labels: np.ndarray, num_classes: int, world_size: int) -> np.ndarray:
    """Rank owning each class id in `labels` (int64 array); the inverse of shard_range."""
    labels = np.asarray(labels, dtype=np.int64)
    base, extra = divmod(num_classes, world_size)
    # The first `extra` ranks hold base+1 classes, so ids below extra*(base+1) fall in those.
    big = extra * (base + 1)
    return np.where(labels < big, labels // (base + 1), extra + (labels - big) // max(base, 1))
