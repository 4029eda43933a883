import os

import cv2
import mxnet as mx
import numpy as np
import pytest

from partial_fc.data import pack as pack_module, synth
from partial_fc.data.loader import open_rec
from partial_fc.data.pack import pack, read_lst, scan_folders
from partial_fc.data.unpack import unpack
from support.cli import one_line_error, run_cli


def jpeg(seed, size=(20, 16)):
    """A small real JPEG (width, height) = size."""
    img = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return cv2.imencode(".jpg", img)[1].tobytes()


def make_folders(root, counts, names=None):
    """One sub-folder per identity; returns {folder name: [bytes in file-name order]}."""
    out = {}
    for c, n in enumerate(counts):
        name = names[c] if names else f"person_{c}"
        os.makedirs(root / name)
        out[name] = []
        for k in range(n):
            data = jpeg(100 * c + k)
            (root / name / f"img_{k:03d}.jpg").write_bytes(data)
            out[name].append(data)
    return out


def read_with_mxnet(folder):
    """[(key, label, image bytes)] of the image records, read by MXNet's own RecordIO reader."""
    r = mx.recordio.MXIndexedRecordIO(str(folder / "train.idx"), str(folder / "train.rec"), "r")
    header, _ = mx.recordio.unpack(r.read_idx(0))
    a, b = int(header.label[0]), int(header.label[1])
    images = []
    for key in range(1, a):
        h, img = mx.recordio.unpack(r.read_idx(key))
        images.append((key, int(h.label), img))
    identities = [tuple(int(v) for v in mx.recordio.unpack(r.read_idx(k))[0].label) for k in range(a, b)]
    r.close()
    return images, identities


def files(folder):
    return {p: (folder / p).read_bytes() for p in ("train.rec", "train.idx", "property")}




def test_pack_of_unpacked_synth_rec_is_byte_identical(tmp_path):
    synth.write_dataset(str(tmp_path / "syn"), identities=4, images_per_identity=3, val_pairs=2, progress=False)
    unpack([str(tmp_path / "syn")], str(tmp_path / "un"), progress=None)
    pack(scan_folders(str(tmp_path / "un")), str(tmp_path / "re"), progress=None)
    assert files(tmp_path / "re") == files(tmp_path / "syn")
    assert not [f for f in os.listdir(tmp_path / "re") if ".tmp-" in f]


def test_pack_unpack_pack_is_byte_identical_and_mxnet_reads_it(tmp_path, capsys):
    made = make_folders(tmp_path / "img", [2, 1, 3])
    status, out, _ = run_cli(["pack", "--input", tmp_path / "img", "--output", tmp_path / "a"], capsys)
    assert status == 0 and "wrote 6 images of 3 identities (property 3,16,20)" in out
    assert (tmp_path / "a" / "property").read_text() == "3,16,20\n"
    images, identities = read_with_mxnet(tmp_path / "a")
    expected = [data for name in sorted(made) for data in made[name]]
    assert [img for _, _, img in images] == expected
    assert [label for _, label, _ in images] == [0, 0, 1, 2, 2, 2]
    assert identities == [(1, 3), (3, 4), (4, 7)]
    assert run_cli(["unpack", "--include", tmp_path / "a", "--output", tmp_path / "un"], capsys)[0] == 0
    assert run_cli(["pack", "--input", tmp_path / "un", "--output", tmp_path / "b"], capsys)[0] == 0
    assert files(tmp_path / "b") == files(tmp_path / "a")


def test_numeric_folder_names_sort_by_number(tmp_path):
    made = make_folders(tmp_path / "img", [1, 1, 1], names=["10", "2", "1"])
    classes = scan_folders(str(tmp_path / "img"))
    assert [os.path.basename(os.path.dirname(paths[0])) for _, paths in classes] == ["1", "2", "10"]
    pack(classes, str(tmp_path / "out"), progress=None)
    with open_rec(str(tmp_path / "out")) as ds:
        assert ds.labels.tolist() == [0, 1, 2] and ds.num_classes == 3
        assert [ds.read(i) for i in range(3)] == [made["1"][0], made["2"][0], made["10"][0]]


def test_shuffle_keeps_classes_and_images_and_is_seeded(tmp_path):
    made = make_folders(tmp_path / "img", [3, 4, 2, 3])
    classes = scan_folders(str(tmp_path / "img"))
    for name, seed in (("s0", 0), ("s0b", 0), ("s1", 1), ("plain", None)):
        pack(classes, str(tmp_path / name), shuffle=seed is not None, seed=seed or 0, progress=None)
    content = {}
    for name in ("s0", "s0b", "s1", "plain"):
        with open_rec(str(tmp_path / name)) as ds:
            content[name] = [(int(ds.labels[i]), ds.read(i)) for i in range(len(ds))]
            assert ds.layout == "insightface"
    expected = sorted((c, data) for c, name in enumerate(sorted(made)) for data in made[name])
    assert all(sorted(v) == expected for v in content.values())
    assert content["s0"] == content["s0b"]
    assert content["s0"] != content["plain"] and content["s0"] != content["s1"]
    assert content["plain"] == [(c, d) for c, name in enumerate(sorted(made)) for d in made[name]]


def test_resize_reencodes_to_the_given_size(tmp_path, capsys):
    make_folders(tmp_path / "img", [2, 1])
    status, out, _ = run_cli(["pack", "--input", tmp_path / "img", "--output", tmp_path / "out",
                              "--resize", "8x12", "--quality", "90"], capsys)
    assert status == 0 and (tmp_path / "out" / "property").read_text() == "2,12,8\n"
    with open_rec(str(tmp_path / "out")) as ds:
        shapes = {cv2.imdecode(np.frombuffer(ds.read(i), np.uint8), cv2.IMREAD_COLOR).shape for i in range(3)}
    assert shapes == {(12, 8, 3)}


def test_lst_input(tmp_path, capsys):
    made = make_folders(tmp_path / "img", [2, 2])
    lst = tmp_path / "img" / "train.lst"
    # im2rec order need not group classes; the class is the first label column.
    lst.write_text(f"0\t1\tperson_1/img_000.jpg\n1\t0.000000\tperson_0/img_001.jpg\n"
                   f"2\t1\t7.5\tperson_1/img_001.jpg\n3\t0\tperson_0/img_000.jpg\n")
    status, out, _ = run_cli(["pack", "--lst", lst, "--output", tmp_path / "out"], capsys)
    assert status == 0
    images, identities = read_with_mxnet(tmp_path / "out")
    assert [(label, img) for _, label, img in images] == [
        (0, made["person_0"][1]), (0, made["person_0"][0]), (1, made["person_1"][0]), (1, made["person_1"][1])]
    assert identities == [(1, 3), (3, 5)]
    assert read_lst(str(lst), str(tmp_path / "img")) == read_lst(str(lst))


@pytest.mark.parametrize("case,message", [
    ("empty_folder", "identity folder holds no images"),
    ("no_input", "not a folder"),
    ("both", "exactly one of --input"),
    ("bad_lst_line", "line 2 is not 'index<TAB>label<TAB>path'"),
    ("bad_lst_label", "label '-1', not a class id"),
    ("missing_image", "img_009.jpg: cannot read image"),
    ("bad_resize", "expected WIDTHxHEIGHT"),
])
def test_bad_input_is_one_line_and_leaves_no_output(tmp_path, capsys, case, message):
    make_folders(tmp_path / "img", [1, 1])
    args = ["--input", tmp_path / "img"]
    if case == "empty_folder":
        os.makedirs(tmp_path / "img" / "person_9")
    elif case == "no_input":
        args = ["--input", tmp_path / "nothing"]
    elif case == "both":
        args += ["--lst", tmp_path / "x.lst"]
    elif case in ("bad_lst_line", "bad_lst_label", "missing_image"):
        lst = tmp_path / "img" / "x.lst"
        second = {"bad_lst_line": "1 0 person_0/img_000.jpg", "bad_lst_label": "1\t-1\tperson_0/img_000.jpg",
                  "missing_image": "1\t1\tperson_1/img_009.jpg"}[case]
        lst.write_text(f"0\t0\tperson_0/img_000.jpg\n{second}\n")
        args = ["--lst", lst]
    elif case == "bad_resize":
        args += ["--resize", "112"]
    status, _, err = run_cli(["pack", *args, "--output", tmp_path / "out"], capsys)
    assert status == 1 and message in one_line_error(err)
    assert not (tmp_path / "out").exists() or os.listdir(tmp_path / "out") == []


def test_interrupted_pack_keeps_the_previous_dataset(tmp_path, capsys, monkeypatch):
    made = make_folders(tmp_path / "img", [2, 2])
    assert run_cli(["pack", "--input", tmp_path / "img", "--output", tmp_path / "out"], capsys)[0] == 0
    before = files(tmp_path / "out")
    (tmp_path / "img" / "person_1" / "img_000.jpg").write_bytes(made["person_0"][0])  # a changed input
    calls = []

    def read_then_interrupt(path):
        calls.append(path)
        if len(calls) == 4:  # the first images are already in the temporary rec
            raise KeyboardInterrupt
        return open(path, "rb").read()

    monkeypatch.setattr(pack_module, "_read", read_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        pack(scan_folders(str(tmp_path / "img")), str(tmp_path / "out"), progress=None)
    assert files(tmp_path / "out") == before
    assert sorted(os.listdir(tmp_path / "out")) == ["property", "train.idx", "train.rec"]
