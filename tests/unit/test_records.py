"""RecordIO reading and its errors (data/records.py, data/loader.open_rec): our reader against MXNet's."""
import os
import subprocess
import sys
import threading

import cv2
import mxnet as mx
import numpy as np
import pytest

from partial_fc.data import synth
from partial_fc.data.loader import FaceIter, open_rec
from partial_fc.data.records import MAGIC, DataError, RecordReader, RecordWriter, pack_image, unpack_image
from support.datasets import marked_dataset, marked_png, write_rec


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
