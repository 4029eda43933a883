"""`partial-fc check-data DIR`: a whole dataset verified in one pass, every kind of damage named and counted."""
import hashlib
import os
import shutil

import cv2
import numpy as np
import pytest

from partial_fc.data import records, synth
from support.cli import one_line_error, run_cli


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    root = tmp_path_factory.mktemp("check")
    synth.write_dataset(str(root / "ok"), identities=6, images_per_identity=3, val_pairs=8, seed=2, progress=False)
    return root / "ok"


def _copy(good, tmp_path):
    d = tmp_path / "d"
    shutil.copytree(good, d)
    return d


def _offsets(d):
    return dict(tuple(map(int, line.split())) for line in open(d / "train.idx"))


def test_a_good_dataset_passes_with_its_summary(good, capsys):
    status, out, err = run_cli(["check-data", good], capsys)
    assert status == 0, err
    assert "layout       insightface" in out and "images       18" in out and "decoded      18" in out
    assert "identities   6" in out and "num_classes  6" in out and "problems:    none" in out
    md5 = hashlib.md5((good / "train.rec").read_bytes()).hexdigest()
    status, out, _ = run_cli(["check-data", good, "--md5", f"train.rec={md5}", "--json"], capsys)
    assert status == 0 and '"md5": "ok"' in out and '"problems": {}' in out


def _damage(d, kind):
    """Break `d` one way; returns (kind of problem, text of its first example)."""
    idx = _offsets(d)
    if kind == "cut last record":  # `truncate -s -10 train.rec`
        os.truncate(d / "train.rec", os.path.getsize(d / "train.rec") - 10)
        return "records", "truncated record"
    if kind == "bad jpeg":
        blob = bytearray((d / "train.rec").read_bytes())
        start = idx[4] + 8 + 24  # part header, image header: the JPEG follows
        blob[start:start + 64] = b"\0" * 64
        (d / "train.rec").write_bytes(bytes(blob))
        return "images", "record key 4: does not decode as an image"
    if kind == "magic":
        blob = bytearray((d / "train.rec").read_bytes())
        blob[idx[7]:idx[7] + 4] = b"\0\0\0\0"
        (d / "train.rec").write_bytes(bytes(blob))
        return "records", "magic mismatch"
    if kind == "label beyond property":
        (d / "property").write_text("5,112,112")
        return "labels", "has label 5, which is not below num_classes=5"
    if kind == "identity count":
        (d / "property").write_text("7,112,112")
        return "identities", "says 7 classes, but"
    if kind == "image size":
        (d / "property").write_text("6,96,96")
        return "images", "the property file says 96x96"
    if kind == "wrong label in an identity":
        # Re-write image key 2 (identity 0) with label 1: the rec still parses, the identity record disagrees.
        reader = records.RecordReader(str(d / "train.rec"), str(d / "train.idx"))
        items = {int(k): reader.read(int(k)) for k in reader.keys}
        reader.close()
        header, image = records.unpack_image(items[2])
        items[2] = records.pack_image(1.0, image, id=2)
        with records.RecordWriter(str(d / "train.rec"), str(d / "train.idx")) as w:
            for key in sorted(items, key=lambda k: idx[k]):  # the same file order as before
                w.write(key, items[key])
        return "identities", "record key 2 has label 1, but lies in the range of identity 0"
    if kind == "md5":
        return "md5", "md5 mismatch: expected 00000000000000000000000000000000"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["cut last record", "bad jpeg", "magic", "label beyond property", "identity count",
                                  "image size", "wrong label in an identity", "md5"])
def test_each_kind_of_damage_is_found_named_and_exits_1(good, tmp_path, capsys, kind):
    d = _copy(good, tmp_path)
    problem, needle = _damage(d, kind)
    extra = ["--md5", "train.rec=" + "0" * 32] if kind == "md5" else []
    status, out, err = run_cli(["check-data", d, *extra], capsys)
    assert status == 1
    line = one_line_error(err)
    assert str(d) in line and "problem(s) found" in line and problem in line
    section = out[out.index(f"    {problem}"):]
    assert needle in section, out


def test_a_missing_file_is_one_line(tmp_path, capsys):
    d = tmp_path / "empty"
    d.mkdir()
    status, _, err = run_cli(["check-data", d], capsys)
    assert status == 1 and one_line_error(err).endswith(f"{d}/train.rec: missing")


def test_an_im2rec_dataset_without_property_is_checked_too(tmp_path, capsys):
    d = tmp_path / "plain"
    d.mkdir()
    image = cv2.imencode(".jpg", np.full((112, 112, 3), 100, np.uint8))[1].tobytes()
    with records.RecordWriter(str(d / "train.rec"), str(d / "train.idx")) as w:
        for key in range(5):
            w.write(10 + key, records.pack_image(key % 2, image if key != 3 else b"junk", id=key))
    status, out, err = run_cli(["check-data", d], capsys)
    assert status == 1 and "layout       im2rec" in out and "no property file" in out
    assert "record key 13: does not decode as an image" in out and "images 1" not in err
