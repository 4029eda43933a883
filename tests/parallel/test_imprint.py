"""Center imprinting at the launcher's world size: every rank holds part of the images, and its shard ends up
with the normalised class means of ALL of them, as a dense computation over every image says; classes
without images keep their seeded centers. Float32 device and compact banks, rounds of a few rows."""
import numpy as np
import pytest

from partial_fc.head import imprint
from partial_fc.head.memory_bank import MemoryBank
from partial_fc.head.sharding import shard_range

C, D, N = 103, 8, 700


def problem():
    rng = np.random.default_rng(42)
    labels = rng.integers(0, C - 20, size=N)            # classes 83.. have no image
    f = rng.standard_normal((N, D))
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    sums = np.zeros((C, D))
    np.add.at(sums, labels, f)
    seen = np.bincount(labels, minlength=C) > 0
    dense = np.where(seen[:, None], sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-300), 0.0)
    return f.astype(np.float32), labels, dense, seen


@pytest.mark.parametrize("storage,dtype,rows", [("device", "float32", 5), ("host", "float16", 7),
                                                ("device", "bfloat16", None), ("device", "float16", 64)])
def test_each_rank_gets_the_normalised_means_of_every_ranks_images(comm, storage, dtype, rows):
    f, labels, dense, seen = problem()
    start, count = shard_range(C, comm.size, comm.rank)
    bank = MemoryBank.create(count, D, seed=3, rank=comm.rank, storage=storage, dtype=dtype)
    before = bank.numpy_float32()[0]
    part = np.arange(N) % comm.size == comm.rank          # each image on exactly one rank, interleaved
    filled = imprint.imprint(bank, comm, C, f[part], labels[part], rows=rows)
    after, momentum = bank.numpy_float32()
    mine = seen[start:start + count]
    assert filled == mine.sum()
    tol = {"float32": 1e-6, "float16": 1e-3, "bfloat16": 8e-3}[dtype]
    np.testing.assert_allclose(after[mine], dense[start:start + count][mine], rtol=0, atol=tol)
    np.testing.assert_array_equal(after[~mine], before[~mine])   # no image: the seeded center, bit for bit
    assert not momentum.any()


def test_class_sums_of_a_sorted_slice():
    labels = np.array([1, 1, 4, 6, 6, 6])
    f = np.arange(12, dtype=np.float32).reshape(6, 2)
    out = np.full((5, 3), 9.0, np.float32)
    imprint.class_sums(f, labels, 2, 7, out)
    np.testing.assert_array_equal(out, [[0, 0, 0], [0, 0, 0], [4, 5, 1], [0, 0, 0], [24, 27, 3]])


def test_rounds_stay_within_their_budget():
    assert imprint.rows_per_round(10_000_000, 8, 512) * 8 * 513 <= imprint.IMPRINT_ROUND_VALUES
    assert imprint.rows_per_round(5, 2, 4) == 3       # never more rows than the largest shard
