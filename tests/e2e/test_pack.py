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




# ---- insightface's writers and readers, as their code does it ----------------------------------------------

def write_like_dataset_merge(folder, identities):
    """A rec written the way insightface's src/data/dataset_merge.py writes one (the layout of its published
    recs), with MXNet's own writer: images on keys 1.. (scalar label, id = key), then one identity record per
    identity (labels (first, end), id = key), then the header on key 0, last in the file."""
    os.makedirs(folder)
    w = mx.recordio.MXIndexedRecordIO(str(folder / "train.idx"), str(folder / "train.rec"), "w")
    idx, ranges = 1, []
    for label, images in enumerate(identities):
        ranges.append((idx, idx + len(images)))
        for data in images:
            w.write_idx(idx, mx.recordio.pack(mx.recordio.IRHeader(0, label, idx, 0), data))
            idx += 1
    first_identity = idx
    for r in ranges:
        w.write_idx(idx, mx.recordio.pack(mx.recordio.IRHeader(1, r, idx, 0), b""))
        idx += 1
    w.write_idx(0, mx.recordio.pack(mx.recordio.IRHeader(1, (first_identity, idx), 0, 0), b""))
    w.close()
    (folder / "property").write_text(f"{len(identities)},16,20")


def read_like_insightface(folder):
    """What insightface's readers take from a rec, each by its own rules, through MXNet's reader:
    FaceImageIter (arcface_mxnet, and the partial_fc reference's image_iter.py): key 0's header with flag > 0
    gives the identity keys range(a, b), each identity record's labels the range of its image keys; without
    one every key is an image. MXFaceDataset (arcface_torch): the image keys are range(1, a), or every key.
    Both take an image's class from its own header (the label, or its first component).
    Returns (FaceImageIter's [(key, class, bytes)], MXFaceDataset's, identity ranges)."""
    r = mx.recordio.MXIndexedRecordIO(str(folder / "train.idx"), str(folder / "train.rec"), "r")
    header, _ = mx.recordio.unpack(r.read_idx(0))
    if header.flag > 0:
        a, b = int(header.label[0]), int(header.label[1])
        ranges = [tuple(int(v) for v in mx.recordio.unpack(r.read_idx(k))[0].label) for k in range(a, b)]
        iter_keys = [key for lo, hi in ranges for key in range(lo, hi)]
        dataset_keys = list(range(1, a))
    else:
        ranges, iter_keys = [], list(r.keys)
        dataset_keys = list(r.keys)

    def image(key):
        h, data = mx.recordio.unpack(r.read_idx(key))
        label = h.label if np.ndim(h.label) == 0 else h.label[0]
        return key, int(label), data
    out = [image(k) for k in iter_keys], [image(k) for k in dataset_keys], ranges
    r.close()
    return out


def expected_from(made):
    """[(class, bytes)] of make_folders' output, in class order."""
    return [(c, data) for c, name in enumerate(sorted(made)) for data in made[name]]


def test_pack_of_unpacked_dataset_merge_rec_is_byte_identical(tmp_path):
    identities = [[jpeg(10 * c + k) for k in range(n)] for c, n in enumerate([3, 1, 2, 4])]
    write_like_dataset_merge(tmp_path / "theirs", identities)
    unpack([str(tmp_path / "theirs")], str(tmp_path / "un"), progress=None)
    pack(scan_folders(str(tmp_path / "un")), str(tmp_path / "ours"), progress=None)
    for name in ("train.rec", "train.idx"):
        assert (tmp_path / "ours" / name).read_bytes() == (tmp_path / "theirs" / name).read_bytes(), name
    assert (tmp_path / "ours" / "property").read_text() == "4,16,20\n"
    assert not [f for f in os.listdir(tmp_path / "ours") if ".tmp-" in f]


def test_pack_of_unpacked_recbuilder_rec_is_byte_identical_with_layout_recbuilder(tmp_path, capsys):
    from insightface.data.rec_builder import RecBuilder  # insightface 0.7.3's own writer

    identities = [[jpeg(10 * c + k, (112, 112)) for k in range(n)] for c, n in enumerate([2, 3, 1])]
    builder = RecBuilder(str(tmp_path / "theirs"))
    for images in identities:
        builder.add(images)  # bytes pass through (mx.recordio.pack)
    builder.close()
    builder.writer.close()  # RecBuilder.close() leaves its writer open (flushed when the process exits)
    capsys.readouterr()
    assert (tmp_path / "theirs" / "property").read_text() == "3,112,112\n6\n"
    assert run_cli(["unpack", "--include", tmp_path / "theirs", "--output", tmp_path / "un"], capsys)[0] == 0
    assert sorted(os.listdir(tmp_path / "un")) == ["00000000", "00000001", "00000002"]
    assert sorted(os.listdir(tmp_path / "un" / "00000001")) == ["000000002.jpg", "000000003.jpg", "000000004.jpg"]
    status, out, err = run_cli(["pack", "--input", tmp_path / "un", "--output", tmp_path / "ours",
                                "--layout", "recbuilder"], capsys)
    assert status == 0, err
    for name in ("train.rec", "train.idx", "property"):
        assert (tmp_path / "ours" / name).read_bytes() == (tmp_path / "theirs" / name).read_bytes(), name
    # The default layout holds the same images for the same readers.
    assert run_cli(["pack", "--input", tmp_path / "un", "--output", tmp_path / "header"], capsys)[0] == 0
    flat = [(c, data) for c, images in enumerate(identities) for data in images]
    for folder in ("theirs", "header"):
        by_iter, by_dataset, _ = read_like_insightface(tmp_path / folder)
        assert [(c, d) for _, c, d in by_iter] == [(c, d) for _, c, d in by_dataset] == flat, folder


@pytest.mark.parametrize("layout", ["insightface", "recbuilder"])
@pytest.mark.parametrize("shuffle", [False, True])
def test_insightface_readers_read_what_pack_wrote(tmp_path, layout, shuffle):
    made = make_folders(tmp_path / "img", [2, 1, 3, 2])
    pack(scan_folders(str(tmp_path / "img")), str(tmp_path / "out"), shuffle=shuffle, seed=3, layout=layout,
         progress=None)
    by_iter, by_dataset, ranges = read_like_insightface(tmp_path / "out")
    # Both readers see the same images (FaceImageIter in identity-record order, i.e. by class, which after
    # --shuffle is not key order; both shuffle before use).
    assert sorted(by_iter) == sorted(by_dataset) and (shuffle or by_iter == by_dataset)
    got = [(c, d) for _, c, d in by_iter]
    assert (sorted(got) if shuffle else got) == (sorted(expected_from(made)) if shuffle else expected_from(made))
    if layout == "insightface":
        # Identity record j covers class j's images, on consecutive keys.
        assert len(ranges) == 4 and all({c for k, c, _ in by_iter if lo <= k < hi} == {j}
                                        for j, (lo, hi) in enumerate(ranges))
    else:
        assert ranges == [] and [k for k, _, _ in by_iter] == list(range(8))
    with open_rec(str(tmp_path / "out")) as ds:  # and so does the trainer
        assert sorted(zip(ds.labels.tolist(), (ds.read(i) for i in range(len(ds))))) == sorted(got)
        assert ds.layout == ("insightface" if layout == "insightface" else "im2rec") and ds.num_classes == 4


def test_unpack_pack_of_a_synth_rec_is_byte_identical(tmp_path):
    """synth writes the insightface layout through the same writer as pack."""
    synth.write_dataset(str(tmp_path / "syn"), identities=4, images_per_identity=3, val_pairs=2, progress=False)
    unpack([str(tmp_path / "syn")], str(tmp_path / "un"), progress=None)
    pack(scan_folders(str(tmp_path / "un")), str(tmp_path / "re"), progress=None)
    assert read_like_insightface(tmp_path / "re") == read_like_insightface(tmp_path / "syn")
    for name in ("train.rec", "train.idx", "property"):
        assert (tmp_path / "re" / name).read_bytes() == (tmp_path / "syn" / name).read_bytes(), name


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


def test_path_label_list_packs_as_the_same_im2rec_list(tmp_path, capsys):
    made = make_folders(tmp_path / "img", [2, 2])
    entries = [("person_1/img_000.jpg", 1), ("person_0/img_001.jpg", 0), ("person_1/img_001.jpg", 1),
               ("person_0/img_000.jpg", 0)]
    (tmp_path / "img" / "two.txt").write_text("".join(f"{p}\t{c}\r\n" for p, c in entries))  # CRLF ends too
    (tmp_path / "img" / "im2rec.lst").write_text("".join(f"{i}\t{c}\t{p}\n" for i, (p, c) in enumerate(entries)))
    for name, extra in (("auto", []), ("explicit", ["--lst-format", "path-label"])):
        status, out, err = run_cli(["pack", "--lst", tmp_path / "img" / "two.txt", *extra,
                                    "--output", tmp_path / name], capsys)
        assert status == 0 and "wrote 4 images of 2 identities" in out, err
    assert run_cli(["pack", "--lst", tmp_path / "img" / "im2rec.lst", "--output", tmp_path / "lst"], capsys)[0] == 0
    assert files(tmp_path / "auto") == files(tmp_path / "explicit") == files(tmp_path / "lst")
    by_iter, _, ranges = read_like_insightface(tmp_path / "auto")
    assert [(c, d) for _, c, d in by_iter] == [
        (0, made["person_0"][1]), (0, made["person_0"][0]), (1, made["person_1"][0]), (1, made["person_1"][1])]
    assert ranges == [(1, 3), (3, 5)]


@pytest.mark.parametrize("case,message", [
    ("empty_folder", "identity folder holds no images"),
    ("no_input", "not a folder"),
    ("both", "exactly one of --input"),
    ("bad_lst_line", "line 2 is not 'index<TAB>label<TAB>path'"),
    ("bad_lst_label", "label '-1', not a class id"),
    ("neither_format", "x.lst: line 1 is neither 'index<TAB>label<TAB>path' (im2rec) nor 'path<TAB>label'"),
    ("mixed_formats", "x.lst: line 2 is not 'path<TAB>label' (path-label, the format of the list)"),
    ("forced_format", "x.lst: line 1 is not 'index<TAB>label<TAB>path' (im2rec, the format of the list)"),
    ("bad_two_column_label", "x.lst: line 1 has label '1.5', not a class id"),
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
    elif case in ("neither_format", "mixed_formats", "forced_format", "bad_two_column_label"):
        lst = tmp_path / "img" / "x.lst"
        lst.write_text({"neither_format": "person_0/img_000.jpg 0\n",
                        "mixed_formats": "person_0/img_000.jpg\t0\n1\t1\tperson_1/img_000.jpg\n",
                        "forced_format": "person_0/img_000.jpg\t0\n",
                        "bad_two_column_label": "person_0/img_000.jpg\t1.5\n"}[case])
        args = ["--lst", lst] + (["--lst-format", "im2rec"] if case == "forced_format" else [])
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
