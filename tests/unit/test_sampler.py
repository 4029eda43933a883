import resource

import numpy as np
import pytest

from partial_fc.head.sampler import CenterSampler, check_labels, num_sampled


def make(count=1000, start=0, C=None, rate=0.1, seed=0, rank=0):
    return CenterSampler(start, count, C or start + count, rate, seed=seed, rank=rank)


@pytest.mark.parametrize("rate", [0.01, 0.1, 0.3, 0.5, 0.7, 1.0])
@pytest.mark.parametrize("n_labels", [1, 64, 600])
def test_invariants(rate, n_labels):
    start, count, C = 500, 1000, 2700
    s = make(count, start, C, rate)
    rng = np.random.default_rng(1)
    labels = rng.integers(0, C, size=n_labels, dtype=np.int64)
    out = s.sample(labels, step=5)
    idx = out.index
    local = labels - start
    on = (local >= 0) & (local < count)
    positives = np.unique(local[on])

    assert idx.dtype == np.int64
    assert np.all(np.diff(idx) > 0), "sorted and unique"
    assert idx[0] >= 0 and idx[-1] < count
    assert np.isin(positives, idx).all(), "every positive is kept"
    assert idx.size == max(int(rate * count), positives.size)
    assert out.full == (idx.size == count)
    assert out.positives == positives.size  # what the trainer reports: kept rows = positives + drawn negatives
    # Remapped labels point at their own class; off-shard rows are -1.
    assert np.all(out.labels[~on] == -1)
    assert np.all(idx[out.labels[on]] == local[on])


def test_sampled_size_is_not_fooled_by_float_rounding():
    assert num_sampled(100, 0.29, 0) == 29  # 0.29 * 100 == 28.999999999999996 in binary floating point
    assert num_sampled(1000, 0.1, 0) == 100
    assert num_sampled(10, 0.05, 0) == 1 and num_sampled(10, 0.05, 3) == 3
    assert num_sampled(10, 1.0, 0) == 10


def test_positives_overflow_keeps_all_of_them():
    s = make(count=100, rate=0.05)
    labels = np.arange(0, 100, 2, dtype=np.int64)  # 50 positives > 5 sampled rows
    out = s.sample(labels, 0)
    assert out.index.size == 50
    assert np.array_equal(out.index, labels)


def test_deterministic_per_seed_and_step():
    labels = np.random.default_rng(0).integers(0, 1000, 32)
    a = make(seed=3).sample(labels, 7).index
    b = make(seed=3).sample(labels, 7).index
    assert np.array_equal(a, b)
    assert not np.array_equal(a, make(seed=4).sample(labels, 7).index)
    assert not np.array_equal(a, make(seed=3).sample(labels, 8).index)
    assert not np.array_equal(a, make(seed=3, rank=1).sample(labels, 7).index)


def test_negatives_are_uniform():
    # 4000 draws of 10 negatives from 99 candidates: each row ~404 times; a chi-square test at p ~ 1e-6.
    s = make(count=100, rate=0.11)
    labels = np.array([37], dtype=np.int64)
    hits = np.zeros(100)
    for step in range(4000):
        hits[s.sample(labels, step).index] += 1
    assert hits[37] == 4000
    neg = np.delete(hits, 37)
    expected = 4000 * 10 / 99
    chi2 = np.sum((neg - expected) ** 2 / expected)
    assert chi2 < 175, chi2  # 98 degrees of freedom; the 1e-6 tail starts near 175


def test_dense_path_is_uniform_too():
    s = make(count=20, rate=0.6)  # more than half the shard: the complement path
    hits = np.zeros(20)
    for step in range(3000):
        hits[s.sample(np.array([5], dtype=np.int64), step).index] += 1
    neg = np.delete(hits, 5)
    expected = 3000 * 11 / 19
    assert hits[5] == 3000
    assert np.sum((neg - expected) ** 2 / expected) < 60  # 18 dof


def test_label_outside_all_shards_is_an_error():
    s = make(count=10, start=0, C=20)
    with pytest.raises(ValueError, match="label 20 is outside"):
        s.sample(np.array([1, 20], dtype=np.int64), 0)
    with pytest.raises(ValueError, match="label -1 is outside"):
        s.sample(np.array([-1], dtype=np.int64), 0)
    with pytest.raises(TypeError, match="integer"):
        check_labels(np.array([1.0, 2.0], dtype=np.float32), 20)


def test_large_class_ids_survive():
    C = 2**40  # far beyond float32's exact integers
    s = CenterSampler(C - 1000, 1000, C, 0.01)
    labels = np.array([C - 1, C - 2, 5], dtype=np.int64)
    out = s.sample(labels, 0)
    assert np.all(out.index[out.labels[:2]] == np.array([999, 998]))
    assert out.labels[2] == -1


def test_bad_rate():
    for r in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="sample rate"):
            make(rate=r)


def test_cost_is_proportional_to_the_subset_not_the_shard():
    # A shard of 4e9 classes: any O(shard) array (a permutation, an arange, a touched mask) would need
    # gigabytes to tens of gigabytes. Sampling 4000 rows must leave peak memory almost where it was.
    # (A memory bound, not a timing: it holds on any machine.)
    count = 4_000_000_000
    s = CenterSampler(0, count, count, 1e-6)
    labels = np.random.default_rng(0).integers(0, count, 128, dtype=np.int64)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    for step in range(3):
        out = s.sample(labels, step)
        assert out.index.size == num_sampled(count, 1e-6, np.unique(labels).size) == 4000
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 64, f"sampling grew peak memory by {grown_mib:.0f} MiB"
