import numpy as np
import pytest

from partial_fc.head.sharding import owner_of, shard_range


@pytest.mark.parametrize("C", [1, 2, 7, 10, 103, 85742, 360232, 2**31 + 5])
@pytest.mark.parametrize("W", [1, 2, 3, 5, 7, 8, 64])
def test_shards_tile_the_classes_exactly(C, W):
    if C < W:
        with pytest.raises(ValueError, match="cannot be split"):
            shard_range(C, W, 0)
        return
    ranges = [shard_range(C, W, k) for k in range(W)]
    assert ranges[0][0] == 0
    for (s0, c0), (s1, _) in zip(ranges, ranges[1:]):
        assert s0 + c0 == s1  # contiguous, no gap, no overlap
    assert sum(c for _, c in ranges) == C  # exact: no padding classes
    counts = [c for _, c in ranges]
    assert max(counts) - min(counts) <= 1
    assert counts == sorted(counts, reverse=True)  # the first C % W ranks hold the extra class


@pytest.mark.parametrize("C,W", [(103, 3), (10, 4), (17, 17), (1000, 7)])
def test_owner_of_inverts_shard_range(C, W):
    ids = np.arange(C, dtype=np.int64)
    owner = owner_of(ids, C, W)
    for k in range(W):
        s, c = shard_range(C, W, k)
        assert np.all(owner[s:s + c] == k)


def test_bad_arguments():
    with pytest.raises(ValueError):
        shard_range(10, 0, 0)
    with pytest.raises(ValueError):
        shard_range(10, 2, 2)
    with pytest.raises(ValueError):
        shard_range(0, 1, 0)
