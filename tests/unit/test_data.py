"""RecordIO reading (records.py) and the training iterators (data.py)."""
import os
import subprocess
import sys
import threading

import cv2
import mxnet as mx
import numpy as np
import pytest

from partial_fc.data import synth
from partial_fc.data.loader import FaceIter, SyntheticIter, open_rec, test_io
from partial_fc.data.records import MAGIC, DataError, RecordReader, RecordWriter, pack_image, unpack_image


def marked_png(i: int, size=(8, 8)) -> bytes:
    """A lossless image that says which record it is: after BGR->RGB, channel 2 (blue) holds i % 256,
    channel 1 holds i // 256, and channel 0 (red) is 255 in the rightmost column only (shows a flip)."""
    h, w = size
    img = np.zeros((h, w, 3), np.uint8)
    img[:, :, 0], img[:, :, 1] = i % 256, i // 256
    img[:, w - 1, 2] = 255
    return cv2.imencode(".png", img)[1].tobytes()


def marker(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(record number, flipped) of each image of a batch of marked_png images."""
    number = images[:, 2, 0, 0].astype(int) + 256 * images[:, 1, 0, 0].astype(int)
    return number, images[:, 0, 0, 0] == 255


def write_rec(folder, payloads, labels, insightface=True, first_key=0, num_classes=None, size=(8, 8)):
    """A dataset with our writer. insightface: header at key 0, images 1.., one identity record per class
    (images must be grouped by class); else every key an image, from first_key."""
    os.makedirs(folder, exist_ok=True)
    with RecordWriter(os.path.join(folder, "train.rec"), os.path.join(folder, "train.idx")) as w:
        if insightface:
            end = 1 + len(payloads)
            classes = sorted(set(labels))
            w.write(0, pack_image([end, end + len(classes)], b""))
        for i, (data, label) in enumerate(zip(payloads, labels)):
            w.write((1 if insightface else first_key) + i, pack_image(label, data))
        if insightface:
            for j, c in enumerate(classes):
                keys = [1 + i for i, lab in enumerate(labels) if lab == c]
                w.write(end + j, pack_image([keys[0], keys[-1] + 1], b""))
    if num_classes is not None:
        with open(os.path.join(folder, "property"), "w") as f:
            f.write(f"{num_classes},{size[0]},{size[1]}\n")
    return str(folder)


def marked_dataset(folder, n=72, classes=6, **kw):
    labels = [i * classes // n for i in range(n)]
    return write_rec(folder, [marked_png(i) for i in range(n)], labels, num_classes=classes, **kw)


# ---- records -------------------------------------------------------------------------------------------

def test_reads_synth_insightface_layout_and_mxnet_agrees(tmp_path):
    synth.write_dataset(str(tmp_path), identities=3, images_per_identity=2, val_pairs=4, progress=False)
    ds = open_rec(str(tmp_path))
    assert ds.layout == "insightface"
    assert ds.keys.tolist() == [1, 2, 3, 4, 5, 6]
    assert ds.labels.tolist() == [0, 0, 1, 1, 2, 2] and ds.labels.dtype == np.int64
    assert ds.num_classes == 3 and ds.image_size == (112, 112) and len(ds) == 6
    # MXNet's own reader sees the same records in the file our writer produced.
    mxr = mx.recordio.MXIndexedRecordIO(str(tmp_path / "train.idx"), str(tmp_path / "train.rec"), "r")
    for i, key in enumerate(ds.keys):
        header, payload = mx.recordio.unpack(mxr.read_idx(int(key)))
        assert payload == ds.read(i) and header.label == ds.labels[i]
        assert cv2.imdecode(np.frombuffer(payload, np.uint8), 1).shape == (112, 112, 3)
    header0 = mx.recordio.unpack(mxr.read_idx(0))[0]
    assert list(header0.label) == [7, 10]
    mxr.close()
    ds.close()


def im2rec(tmp_path, vector=False, first_key=0):
    """JPEGs in class folders -> im2rec .lst (edited for vector labels / keys) -> .rec. {key: (labels, file)}"""
    root = tmp_path / "images"
    rng = np.random.default_rng(0)
    for c in range(3):
        (root / f"class{c}").mkdir(parents=True)
        for k in range(2):
            img = rng.integers(0, 256, (16, 12, 3), dtype=np.uint8)
            cv2.imwrite(str(root / f"class{c}" / f"{k}.jpg"), img)
    prefix = str(tmp_path / "data")
    run = lambda *args: subprocess.run([sys.executable, "-m", "mxnet.tools.im2rec", *args], check=True,  # noqa
                                       capture_output=True, text=True)
    run("--list", "--recursive", prefix, str(root))
    expected, lines = {}, []
    for line in open(prefix + ".lst"):
        key, label, path = line.rstrip("\n").split("\t")
        key = int(key) + first_key
        labels = [float(label), 7.5] if vector else [float(label)]
        expected[key] = (labels, str(root / path))
        lines.append("\t".join([str(key), *map(str, labels), path]) + "\n")
    with open(prefix + ".lst", "w") as f:
        f.writelines(lines)
    run("--pass-through", *(["--pack-label"] if vector else []), prefix, str(root))
    return prefix + ".rec", expected


@pytest.mark.parametrize("vector,first_key", [(False, 0), (True, 100)])
def test_reads_mxnet_im2rec_output(tmp_path, vector, first_key):
    rec, expected = im2rec(tmp_path, vector, first_key)
    ds = open_rec(rec)
    assert ds.layout == "im2rec"
    assert sorted(expected) == ds.keys.tolist()
    assert ds.num_classes == 3 and ds.image_size == (16, 12)
    reader = RecordReader(rec, rec[:-4] + ".idx")
    for i, key in enumerate(ds.keys.tolist()):
        labels, path = expected[key]
        assert ds.labels[i] == int(labels[0])
        assert reader.read_header(key).labels.tolist() == labels
        data = ds.read(i)
        with open(path, "rb") as f:
            assert data == f.read()
        np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(data, np.uint8), 1), cv2.imread(path))
    reader.close()
    with FaceIter(ds, 2, 0, 1, flip=False, threads=1) as it:
        images, labels = next(it)
    i = int(it.positions(0)[0][0])
    np.testing.assert_array_equal(images[0], cv2.imread(expected[int(ds.keys[i])][1])[:, :, ::-1].transpose(2, 0, 1))
    assert labels[0] == ds.labels[i]


def test_multi_part_records_round_trip_with_mxnet(tmp_path):
    # The writers cut a record where the magic word sits at an aligned offset; readers must join the parts.
    magic = MAGIC.to_bytes(4, "little")
    payloads = [b"abcd" + magic + b"efgh" + magic + magic + b"xy", magic + b"12", b"q" + magic + b"rst"]
    mxw = mx.recordio.MXIndexedRecordIO(str(tmp_path / "m.idx"), str(tmp_path / "m.rec"), "w")
    with RecordWriter(str(tmp_path / "o.rec"), str(tmp_path / "o.idx")) as ours:
        for k, p in enumerate(payloads):
            mxw.write_idx(k, p)
            ours.write(k, p)
    mxw.close()
    assert (tmp_path / "m.rec").read_bytes() == (tmp_path / "o.rec").read_bytes()
    with RecordReader(str(tmp_path / "m.rec"), str(tmp_path / "m.idx")) as r:
        assert [r.read(k) for k in range(3)] == payloads


def test_float32_rounded_image_boundary_is_recovered(tmp_path):
    # Above 2^24 the header's float32 label cannot hold the first identity key exactly (Glint360K has 17 M
    # images); the reader looks for the identity records around it.
    from partial_fc.data.records import _exact_boundary
    folder = marked_dataset(tmp_path, n=12, classes=3)
    with RecordReader(os.path.join(folder, "train.rec"), os.path.join(folder, "train.idx")) as r:
        assert [_exact_boundary(r, guess) for guess in (11, 12, 13, 14, 15)] == [13] * 5


def test_image_header_round_trip():
    header, data = unpack_image(pack_image([3, 4.5], b"img", id=9, id2=2))
    assert header.flag == 2 and header.labels.tolist() == [3, 4.5] and header.label == 3
    assert (header.id, header.id2, data) == (9, 2, b"img")
    header, data = unpack_image(mx.recordio.pack(mx.recordio.IRHeader(0, 5.0, 1, 0), b"x"))
    assert header.flag == 0 and header.label == 5.0 and data == b"x"


def test_reads_are_thread_safe(tmp_path):
    ds = open_rec(marked_dataset(tmp_path, insightface=False))
    want = [ds.read(i) for i in range(len(ds))]
    got, errors = {}, []

    def work(t):
        try:
            for _ in range(5):
                for i in range(len(ds)):
                    assert ds.read((i + t) % len(ds)) == want[(i + t) % len(ds)]
        except Exception as e:  # noqa: BLE001  collected for the main thread
            errors.append(e)
        got[t] = True

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors and len(got) == 4


def corrupt(path, offset, data):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def test_missing_files(tmp_path):
    folder = marked_dataset(tmp_path / "a", n=8)
    os.remove(os.path.join(folder, "train.idx"))
    with pytest.raises(DataError, match=r"train\.idx: missing"):
        open_rec(folder)
    with pytest.raises(DataError, match=r"nothing\.rec: missing"):
        open_rec(str(tmp_path / "nothing.rec"))
    with pytest.raises(DataError, match="neither a folder"):
        open_rec(str(tmp_path / "file.txt"))


def test_idx_offset_past_end(tmp_path):
    folder = marked_dataset(tmp_path, n=8)
    size = os.path.getsize(os.path.join(folder, "train.rec"))
    with open(os.path.join(folder, "train.idx"), "a") as f:
        f.write(f"99\t{size + 8}\n")
    with pytest.raises(DataError, match=rf"train\.idx: offset {size + 8} of key 99 is past the end of .*train\.rec"):
        open_rec(folder)


def test_malformed_idx_line(tmp_path):
    folder = marked_dataset(tmp_path, n=8)
    with open(os.path.join(folder, "train.idx"), "a") as f:
        f.write("12 oops\n")
    with pytest.raises(DataError, match=r"train\.idx: line 16 is not .key<TAB>offset.: .12 oops."):
        open_rec(folder)


def test_corrupted_magic(tmp_path):
    folder = marked_dataset(tmp_path, n=8, insightface=False)
    reader = RecordReader(os.path.join(folder, "train.rec"), os.path.join(folder, "train.idx"))
    first, fourth = int(reader.offsets[0]), int(reader.offsets[3])
    reader.close()
    corrupt(os.path.join(folder, "train.rec"), fourth, b"\0\0\0\0")
    # The label scan reads every header of an im2rec layout, so open_rec already sees it.
    with pytest.raises(DataError, match=rf"train\.rec: magic mismatch at offset {fourth} \(record key 3\)"):
        open_rec(folder)
    corrupt(os.path.join(folder, "train.rec"), first, b"JUNK")
    with pytest.raises(DataError, match=r"train\.rec: magic mismatch at offset 0"):
        open_rec(folder)


def test_corrupted_magic_found_when_reading(tmp_path):
    # In the insightface layout only the first and last image of each identity are read when opening.
    folder = marked_dataset(tmp_path, n=12, classes=2)
    ds = open_rec(folder)
    corrupt(ds.rec_path, int(ds._offsets[2]), b"\0\0\0\0")
    with pytest.raises(DataError, match=r"train\.rec: magic mismatch at offset \d+ \(record key 3\)"):
        ds.read(2)


def test_truncated_rec(tmp_path):
    folder = marked_dataset(tmp_path, n=8, insightface=False)
    rec = os.path.join(folder, "train.rec")
    os.truncate(rec, os.path.getsize(rec) - 10)  # `truncate -s -10`: every idx offset still inside the file
    # Refused when opened (the last record must end at the file's end), not when record 7 is first read.
    with pytest.raises(DataError, match=r"train\.rec: truncated record \(record key 7, the last in .*train\.idx\)"
                                        r": it ends at byte \d+ or later, the file at \d+"):
        open_rec(folder)


@pytest.mark.parametrize("layout", ["im2rec", "insightface", "multi-part"])
def test_a_rec_cut_anywhere_in_its_last_record_or_grown_past_it_is_refused(tmp_path, layout):
    """The record at the largest idx offset, whatever its key, must end exactly at the end of the file."""
    rec, idx = str(tmp_path / "train.rec"), str(tmp_path / "train.idx")
    image = marked_png(1)
    if layout == "multi-part":  # the magic word at an aligned position splits a record into parts
        image = image + b"\0" * (-len(image) % 4) + MAGIC.to_bytes(4, "little") + b"tail"
    with RecordWriter(rec, idx) as w:
        for key in range(4):
            w.write(key, pack_image(key % 2, b"" if layout == "insightface" and key == 3 else image, id=key))
    whole = open(rec, "rb").read()
    RecordReader(rec, idx).close()  # whole: accepted
    last = max(int(line.split()[1]) for line in open(idx))
    for cut in (1, 4, 10, len(whole) - last - 8, len(whole) - last - 1):
        with open(rec, "wb") as f:
            f.write(whole[:len(whole) - cut])
        with pytest.raises(DataError, match=r"train\.rec: truncated record \(record key 3, the last in"):
            RecordReader(rec, idx)
    with open(rec, "wb") as f:
        f.write(whole + b"\0" * 8)
    with pytest.raises(DataError, match=r"trailing bytes after the last record \(record key 3"):
        RecordReader(rec, idx)


def test_label_beyond_property(tmp_path):
    folder = write_rec(tmp_path, [marked_png(i) for i in range(4)], [0, 1, 5, 1], insightface=False,
                       first_key=10, num_classes=5)
    with pytest.raises(DataError, match=r"train\.rec: record key 12 has label 5, which is not below "
                                        r"num_classes=5 given by .*property"):
        open_rec(folder)


def test_negative_label(tmp_path):
    folder = write_rec(tmp_path, [marked_png(i) for i in range(3)], [0, -1, 1], insightface=False)
    with pytest.raises(DataError, match=r"train\.rec: record key 1 has label -1, which is negative"):
        open_rec(folder)


def test_fractional_label_and_bad_property(tmp_path):
    folder = write_rec(tmp_path / "a", [marked_png(0)], [0.5], insightface=False)
    with pytest.raises(DataError, match=r"record key 0 has label 0.5, not an integer class id"):
        open_rec(folder)
    folder = marked_dataset(tmp_path / "b", n=8)
    with open(os.path.join(folder, "property"), "w") as f:
        f.write("8,112\n")
    with pytest.raises(DataError, match=r"property: expected 'num_classes,height,width'"):
        open_rec(folder)


def test_without_property_the_labels_and_first_image_decide(tmp_path):
    folder = write_rec(tmp_path, [marked_png(i, (6, 10)) for i in range(4)], [0, 3, 1, 1], insightface=False)
    ds = open_rec(folder)
    assert ds.num_classes == 4 and ds.image_size == (6, 10)


@pytest.mark.parametrize("text", ["6,8,8\n72\n", "6,8,8\n72", "6,8,8\n72\nshuffled\n2021-01-01 00:00:00\n"])
def test_property_with_the_image_count_on_line_two(tmp_path, text):
    """insightface 0.7.3's RecBuilder writes 'classes,h,w' then the image count; rec2shufrec.py adds two notes."""
    for insightface in (True, False):
        folder = marked_dataset(tmp_path / str(insightface), insightface=insightface)
        with open(os.path.join(folder, "property"), "w") as f:
            f.write(text)
        with open_rec(folder) as ds:
            assert (ds.num_classes, ds.image_size, len(ds)) == (6, (8, 8), 72)


@pytest.mark.parametrize("second, message", [
    ("71", r"property: line 2 says 71 images, but .*train\.rec holds 72"),
    ("six", r"property: line 2 must be the number of images \(as insightface writes it\), got 'six'"),
])
def test_property_line_two_that_disagrees_is_refused(tmp_path, second, message):
    folder = marked_dataset(tmp_path)
    with open(os.path.join(folder, "property"), "w") as f:
        f.write(f"6,8,8\n{second}\n")
    with pytest.raises(DataError, match=message):
        open_rec(folder)


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
