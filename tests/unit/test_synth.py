"""The synthetic face dataset (synth.py)."""
import os
import pickle

import cv2
import numpy as np
import pytest

from partial_fc import cli
from partial_fc.data import synth
from partial_fc.data.loader import open_rec

FILES = ["property", "synth_hard.bin", "synth_val.bin", "train.idx", "train.rec"]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    summary = synth.write_dataset(str(out), identities=5, images_per_identity=3, val_pairs=10, seed=7,
                                  progress=False)
    return out, summary


def test_files_and_property(small):
    out, summary = small
    assert sorted(os.listdir(out)) == FILES  # no temporary files left behind
    assert (out / "property").read_text() == "5,112,112\n"
    assert summary["images"] == 15 and summary["identities"] == 5
    assert summary["rec_bytes"] == os.path.getsize(out / "train.rec")


def test_train_rec_is_the_insightface_layout(small):
    out, _ = small
    ds = open_rec(str(out))
    assert ds.layout == "insightface" and len(ds) == 15 and ds.num_classes == 5
    assert ds.labels.tolist() == [i // 3 for i in range(15)]
    img = cv2.imdecode(np.frombuffer(ds.read(4), np.uint8), cv2.IMREAD_UNCHANGED)
    assert img.shape == (112, 112, 3) and img.dtype == np.uint8
    ds.close()


@pytest.mark.parametrize("name", ["synth_val", "synth_hard"])
def test_bin_sets_load_in_the_reference_format(small, name):
    out, summary = small
    with open(out / f"{name}.bin", "rb") as f:
        bins, issame = pickle.load(f)
    assert type(bins) is list and type(issame) is list
    assert len(bins) == 2 * 10 and len(issame) == 10
    assert all(type(b) is bytes for b in bins) and all(type(s) is bool for s in issame)
    assert sum(issame) == 5
    for b in bins[:4]:
        assert cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR).shape == (112, 112, 3)
    for (a, b), same in zip(zip(bins[0::2], bins[1::2]), issame):
        assert a != b  # never the same image twice, even in a same-identity pair
    assert summary["sets"][name]["pairs"] == 10


def test_same_seed_same_bytes(small, tmp_path):
    out, _ = small
    synth.write_dataset(str(tmp_path / "again"), identities=5, images_per_identity=3, val_pairs=10, seed=7,
                        progress=False, workers=1)  # the thread count must not matter
    for name in FILES:
        assert (out / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name
    synth.write_dataset(str(tmp_path / "other"), identities=5, images_per_identity=3, val_pairs=10, seed=8,
                        progress=False)
    assert (out / "train.rec").read_bytes() != (tmp_path / "other" / "train.rec").read_bytes()


def _vector(p):
    return np.concatenate([np.ravel(np.asarray(v, dtype=np.float64)) for k, v in sorted(p.items()) if k != "moles"])


def test_verification_identities_are_held_out():
    train = [_vector(synth.identity_params(7, synth._TRAIN, i)) for i in range(50)]
    for split in (synth._VAL, synth._HARD):
        for i in range(20):
            v = _vector(synth.identity_params(7, split, i))
            assert min(np.abs(v - t).max() for t in train) > 0


def test_pairs_are_half_same_and_within_the_split():
    pairs = synth.make_pairs(0, synth._VAL, identities=12, images_per_identity=6, pairs=101)
    assert len(pairs) == 101 and sum(same for *_, same in pairs) == 51
    for (i, a), (k, b), same in pairs:
        assert 0 <= i < 12 and 0 <= k < 12 and 0 <= a < 6 and 0 <= b < 6
        assert (i == k and a != b) if same else i != k


def test_images_are_pure_functions_and_nuisance_moves_them():
    p = synth.identity_params(0, synth._TRAIN, 0)
    assert np.array_equal(synth.image(0, 0, 0, 1, 1.0, p), synth.image(0, 0, 0, 1, 1.0))
    assert not np.array_equal(synth.image(0, 0, 0, 1, 1.0, p), synth.image(0, 0, 0, 2, 1.0, p))
    # At strength 0 the images of an identity differ only by background and noise: the face is fixed.
    a, b = synth.image(0, 0, 0, 1, 0.0, p), synth.image(0, 0, 0, 2, 0.0, p)
    centre = (slice(45, 70), slice(40, 72))
    assert np.abs(a[centre].astype(int) - b[centre]).mean() < 4


def test_command_line(tmp_path, capsys):
    assert cli.main(["synth", "--output", str(tmp_path / "d"), "--identities", "2", "--images-per-identity", "2",
                     "--pairs", "4", "--quiet"]) == 0
    assert "wrote 4 images of 2 identities" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path / "d")) == FILES
    assert cli.main(["synth", "--output", str(tmp_path / "e"), "--identities", "1", "--quiet"]) == 2
    assert "error: need identities >= 2" in capsys.readouterr().err
