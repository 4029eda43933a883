"""The training iterators (data/loader.py): FaceIter over a RecordIO dataset, SyntheticIter."""
import threading

import numpy as np
import pytest

from partial_fc.data.loader import FaceIter, SyntheticIter, open_rec, test_io
from partial_fc.data.records import DataError
from support.datasets import marked_dataset, marked_png, marker, write_rec


# ---- FaceIter -------------------------------------------------------------------------------------------

def take(it, steps):
    return [next(it) for _ in range(steps)]


@pytest.mark.parametrize("world", [1, 2, 3])
def test_every_image_once_per_epoch_across_ranks(tmp_path, world):
    ds = open_rec(marked_dataset(tmp_path, n=72))
    batch = 4
    iters = [FaceIter(ds, batch, k, world, seed=3, threads=2) for k in range(world)]
    spe = iters[0].steps_per_epoch
    assert spe == 72 // (batch * world)
    perm = np.random.default_rng([3, 0]).permutation(72)
    seen = []
    for step in range(spe):
        global_batch = []
        for k, it in enumerate(iters):
            images, labels = next(it)
            assert images.shape == (batch, 3, 8, 8) and images.dtype == np.float32
            assert labels.dtype == np.int64
            number, _ = marker(images)
            np.testing.assert_array_equal(labels, ds.labels[number])
            global_batch += number.tolist()
        # Ranks take consecutive blocks of the shared permutation.
        assert global_batch == perm[step * batch * world:(step + 1) * batch * world].tolist()
        seen += global_batch
    assert sorted(seen) == list(range(72))
    for it in iters:
        it.close()


def test_remainder_is_dropped(tmp_path):
    ds = open_rec(marked_dataset(tmp_path, n=30))
    with FaceIter(ds, 4, 1, 2, threads=1) as it:
        assert it.steps_per_epoch == 3
        first = [marker(next(it)[0])[0] for _ in range(3)]
        assert it.epoch == 1
    perm = np.random.default_rng([0, 0]).permutation(30)
    assert np.concatenate(first).tolist() == np.concatenate([perm[8 * s + 4:8 * s + 8] for s in range(3)]).tolist()


def test_resume_equals_skipping(tmp_path):
    ds = open_rec(marked_dataset(tmp_path, n=40))
    with FaceIter(ds, 4, 1, 2, seed=5, threads=2) as fresh:
        spe = fresh.steps_per_epoch
        k = spe + 2  # resume inside the second epoch
        reference = take(fresh, k + 4)[k:]
    with FaceIter(ds, 4, 1, 2, seed=5, start_step=k, threads=1, prefetch=1) as resumed:
        assert resumed.step == k
        for (a, la), (b, lb) in zip(reference, take(resumed, 4)):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(la, lb)


def test_epochs_roll_over_with_a_new_permutation(tmp_path):
    ds = open_rec(marked_dataset(tmp_path, n=24))
    with FaceIter(ds, 4, 0, 1, seed=1) as it:
        epochs = [np.concatenate([marker(next(it)[0])[0] for _ in range(6)]) for _ in range(3)]
    for order in epochs:
        assert sorted(order) == list(range(24))
    assert epochs[0].tolist() != epochs[1].tolist() != epochs[2].tolist()
    assert epochs[1].tolist() == np.random.default_rng([1, 1]).permutation(24).tolist()


def test_flips_half_the_samples_deterministically(tmp_path):
    ds = open_rec(marked_dataset(tmp_path, n=400, classes=10))
    with FaceIter(ds, 20, 0, 1, seed=2) as it:
        flipped = []
        for step in range(20):
            images, _ = next(it)
            _, f = marker(images)
            np.testing.assert_array_equal(f, it.positions(step)[1])
            flipped.append(f)
    assert 150 < np.concatenate(flipped).sum() < 250
    with FaceIter(ds, 20, 0, 1, seed=2, flip=False) as it:
        assert not marker(next(it)[0])[1].any()


def with_garbage(folder, n, bad):
    payloads = [b"not an image" if i in bad else marked_png(i) for i in range(n)]
    return open_rec(write_rec(folder, payloads, [i % 4 for i in range(n)], insightface=False, num_classes=4))


def test_a_corrupt_image_is_replaced_and_counted(tmp_path):
    ds = with_garbage(tmp_path, 40, bad={13})
    with FaceIter(ds, 4, 0, 1, seed=4, max_bad_fraction=0.5) as it:
        for step in range(10):
            images, labels = next(it)
            index = it.positions(step)[0]
            number, _ = marker(images)
            if 13 in index:
                j = int(np.flatnonzero(index == 13)[0])
                # Replaced by the next sample of the same batch, label included.
                assert number[j] == index[(j + 1) % 4] and labels[j] == ds.labels[index[(j + 1) % 4]]
            assert 13 not in number.tolist()
            np.testing.assert_array_equal(labels, ds.labels[number])
    assert it.bad_records == 1 and it.images_read == 40


def test_too_many_bad_records_raise(tmp_path):
    ds = with_garbage(tmp_path, 80, bad=set(range(0, 80, 10)))
    it = FaceIter(ds, 4, 0, 1, max_bad_fraction=0.05)
    it.ALLOWANCE_READS = 40
    with pytest.raises(DataError, match=r"train\.rec: \d+ of \d+ images read failed to decode, more than "
                                        r"max_bad_fraction=0.05 \(first: record key \d+"):
        take(it, 20)
    it.close()
    with FaceIter(ds, 4, 0, 1, max_bad_fraction=0) as it:
        with pytest.raises(DataError, match="more than max_bad_fraction=0"):
            take(it, 20)
    with FaceIter(with_garbage(tmp_path / "all", 8, bad=set(range(8))), 4, 0, 1, max_bad_fraction=1) as it:
        with pytest.raises(DataError, match="no image of step 0 on rank 0 decodes"):
            next(it)


def test_one_bad_record_early_in_a_run_is_tolerated_at_the_default_fraction(tmp_path):
    # 1 bad in the first 80 reads is 1.25 %, far above 0.001, but within the allowance of 0.001 x 10,000.
    ds = with_garbage(tmp_path, 80, bad={3})
    with FaceIter(ds, 4, 0, 1, max_bad_fraction=0.001) as it:
        take(it, 20)
        assert it.bad_records == 1 and it.images_read == 80


def test_an_image_of_the_wrong_size_raises(tmp_path):
    payloads = [marked_png(i) for i in range(8)]
    payloads[5] = marked_png(5, (9, 8))
    ds = open_rec(write_rec(tmp_path, payloads, [0] * 8, insightface=False, first_key=20, num_classes=1))
    with FaceIter(ds, 8, 0, 1) as it:
        with pytest.raises(DataError, match=r"train\.rec: record key 25 decodes to 9x8, not the dataset's "
                                            r"image size 8x8"):
            next(it)


def test_close_stops_the_threads(tmp_path):
    ds = open_rec(marked_dataset(tmp_path, n=24))
    before = {t for t in threading.enumerate() if t.name.startswith("face-iter")}
    with FaceIter(ds, 4, 0, 1, threads=2) as it:
        next(it)
    assert {t for t in threading.enumerate() if t.name.startswith("face-iter")} == before
    with pytest.raises(RuntimeError, match="closed"):
        next(it)


def test_too_small_for_one_global_batch(tmp_path):
    ds = open_rec(marked_dataset(tmp_path, n=8))
    with pytest.raises(DataError, match="8 images are fewer than one global batch of 12"):
        FaceIter(ds, 4, 0, 3)


def test_test_io_reports_a_rate(tmp_path):
    ds = open_rec(marked_dataset(tmp_path, n=24))
    result = test_io(ds, batch_size=4, threads=2, batches=5)
    assert result["images_per_s"] > 0 and result["batches"] == 5 and result["bad_records"] == 0


# ---- SyntheticIter ---------------------------------------------------------------------------------------

def test_synthetic_iter_is_deterministic():
    a = SyntheticIter(8, 1000, rank=1, world_size=2, seed=3, image_size=(16, 16))
    b = SyntheticIter(8, 1000, rank=1, world_size=2, seed=3, start_step=2, image_size=(16, 16))
    batches = take(a, 4)
    for (x, y), (u, v) in zip(batches[2:], take(b, 2)):
        np.testing.assert_array_equal(x, u)
        np.testing.assert_array_equal(y, v)
    x, y = batches[0]
    assert x.shape == (8, 3, 16, 16) and x.dtype == np.float32 and y.dtype == np.int64
    assert 0 <= x.min() and x.max() <= 255 and 0 <= y.min() and y.max() < 1000
    other = SyntheticIter(8, 1000, rank=0, world_size=2, seed=3, image_size=(16, 16))
    assert not np.array_equal(next(other)[1], y)
    assert len({tuple(v.tolist()) for _, v in batches}) == 4


def test_synthetic_identities_recur_with_their_own_face_on_every_rank():
    C, K = 10_000_000, 16
    noise = SyntheticIter.IDENTITY_NOISE
    ranks = [SyntheticIter(8, C, rank=r, world_size=2, seed=3, image_size=(8, 8), identities=K) for r in (0, 1)]
    seen = {}
    for it in ranks:
        for images, labels in take(it, 6):
            assert 0 <= images.min() and images.max() <= 255 and images.dtype == np.float32
            flat = images.reshape(len(images), -1)
            # No two images of a batch are equal, even of one identity (BatchNorm over equal rows gives zeros).
            assert len({row.tobytes() for row in flat}) == len(images)
            for image, label in zip(images, labels.tolist()):
                assert label in seen or len(seen) < K
                first = seen.setdefault(label, image)
                # One face per identity (on both ranks): every draw within 2 x the noise of the first one.
                assert np.abs(image - first).max() <= 2 * noise
    faces = [it._pool for it in ranks]
    np.testing.assert_array_equal(faces[0], faces[1])
    assert np.abs(faces[0][0] - faces[0][1]).max() > 2 * noise  # and faces far apart
    assert set(seen) <= {k * C // K for k in range(K)} and len(seen) > K // 2
    # The identities are spread over the class range, so both halves (both ranks' shards) hold some.
    assert min(seen) < C // 2 <= max(seen)
    with pytest.raises(ValueError):
        SyntheticIter(8, 10, rank=0, world_size=1, identities=11)
