import os
import pickle

import cv2
import numpy as np
import pytest

from partial_fc.data.make_bin import detect_format, make_bin, read_pairs
from partial_fc.data.bins import BinError, load_pairs
from support.cli import one_line_error, run_cli


def jpeg(seed, size=(20, 16)):
    img = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return cv2.imencode(".jpg", img)[1].tobytes()


def lfw_tree(root):
    """root/name/name_%04d.jpg for two people; returns {(name, i): bytes}."""
    images = {}
    for p, (name, count) in enumerate((("Ann_Lee", 2), ("Bo_Ng", 3))):
        os.makedirs(root / name)
        for i in range(1, count + 1):
            images[(name, i)] = jpeg(10 * p + i)
            (root / name / f"{name}_{i:04d}.jpg").write_bytes(images[(name, i)])
    return images


LFW_PAIRS = "1\t3\nAnn_Lee\t1\t2\nBo_Ng\t1\t3\nAnn_Lee\t2\tBo_Ng\t3\n"




def test_lfw_pairs_round_trip_through_the_restricted_loader(tmp_path, capsys):
    images = lfw_tree(tmp_path / "lfw")
    (tmp_path / "pairs.txt").write_text(LFW_PAIRS)
    status, out, _ = run_cli(["make-bin", "--pairs", tmp_path / "pairs.txt", "--root", tmp_path / "lfw",
                              "--output", tmp_path / "lfw.bin"], capsys)
    assert status == 0 and "3 pairs (2 same identity), 4 distinct images" in out
    got, issame = load_pairs(str(tmp_path / "lfw.bin"))
    expected = [images[k] for k in [("Ann_Lee", 1), ("Ann_Lee", 2), ("Bo_Ng", 1), ("Bo_Ng", 3),
                                     ("Ann_Lee", 2), ("Bo_Ng", 3)]]
    assert got == expected and issame.tolist() == [True, True, False]
    # The reference format exactly: a pickle of (list of bytes, list of bool).
    assert pickle.loads((tmp_path / "lfw.bin").read_bytes()) == (expected, [True, True, False])
    assert not [f for f in os.listdir(tmp_path) if ".tmp-" in f]


def test_list_format_auto_detected_with_resize(tmp_path, capsys):
    images = lfw_tree(tmp_path / "img")
    (tmp_path / "img" / "pairs.lst").write_text(
        "Ann_Lee/Ann_Lee_0001.jpg Bo_Ng/Bo_Ng_0002.jpg 0\n\nBo_Ng/Bo_Ng_0001.jpg\tBo_Ng/Bo_Ng_0003.jpg\ttrue\n")
    assert detect_format((tmp_path / "img" / "pairs.lst").read_text().splitlines()) == "list"
    assert detect_format(LFW_PAIRS.splitlines()) == "lfw"
    # --root defaults to the pairs file's folder
    status, _, _ = run_cli(["make-bin", "--pairs", tmp_path / "img" / "pairs.lst", "--output", tmp_path / "a.bin"],
                           capsys)
    assert status == 0
    got, issame = load_pairs(str(tmp_path / "a.bin"))
    assert got[0] == images[("Ann_Lee", 1)] and got[3] == images[("Bo_Ng", 3)]
    assert issame.tolist() == [False, True]
    status, _, _ = run_cli(["make-bin", "--pairs", tmp_path / "img" / "pairs.lst", "--output", tmp_path / "r.bin",
                            "--resize", "10x8", "--format", "list"], capsys)
    got, _ = load_pairs(str(tmp_path / "r.bin"))
    assert status == 0 and {cv2.imdecode(np.frombuffer(b, np.uint8), 1).shape for b in got} == {(8, 10, 3)}
    status, out, _ = run_cli(["make-bin", "--check", tmp_path / "r.bin"], capsys)
    assert status == 0 and "2 pairs (1 same identity)" in out


def test_read_pairs_paths(tmp_path):
    (tmp_path / "p.txt").write_text(LFW_PAIRS)
    pairs = read_pairs(str(tmp_path / "p.txt"), "R")
    assert pairs[2] == (os.path.join("R", "Ann_Lee", "Ann_Lee_0002.jpg"), os.path.join("R", "Bo_Ng", "Bo_Ng_0003.jpg"),
                        False)


@pytest.mark.parametrize("case,message", [
    ("missing_image", "Bo_Ng_0004.jpg: missing image"),
    ("bad_line", "line 2 is neither 'name i j' nor 'name1 i name2 j'"),
    ("bad_list", "line 1 is not 'path1 path2 same'"),
    ("not_an_image", "Bo_Ng_0001.jpg: not a decodable image"),
    ("no_pairs_file", "nope.txt: missing"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, case, message):
    lfw_tree(tmp_path / "lfw")
    pairs = tmp_path / "pairs.txt"
    text = {"missing_image": "1 1\nBo_Ng 1 4\n", "bad_line": "1 1\nBo_Ng one 2\n",
            "bad_list": "a.jpg b.jpg maybe\n", "not_an_image": "1 1\nBo_Ng 1 2\n"}.get(case, "")
    pairs.write_text(text)
    if case == "not_an_image":
        (tmp_path / "lfw" / "Bo_Ng" / "Bo_Ng_0001.jpg").write_bytes(b"not a jpeg")
    if case == "no_pairs_file":
        pairs = tmp_path / "nope.txt"
    status, _, err = run_cli(["make-bin", "--pairs", pairs, "--root", tmp_path / "lfw", "--output",
                              tmp_path / "x.bin"], capsys)
    assert status == 1 and message in one_line_error(err)
    assert not (tmp_path / "x.bin").exists()


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_malicious_pickle_is_refused_without_running_it(tmp_path, capsys):
    marker = str(tmp_path / "pwned")
    evil = tmp_path / "evil.bin"
    evil.write_bytes(pickle.dumps(([_Evil(marker), jpeg(0)], [True]), protocol=4))
    with pytest.raises(BinError, match="refusing to load posix.mkdir"):
        load_pairs(str(evil))
    status, _, err = run_cli(["make-bin", "--check", evil], capsys)
    assert status == 1 and "evil.bin: not a verification .bin" in one_line_error(err)
    assert not os.path.exists(marker)
    # Sanity: the same bytes do run the payload under plain pickle, so the test can fail.
    pickle.loads(evil.read_bytes())
    assert os.path.exists(marker)


def test_make_bin_output_loads_and_replaces_atomically(tmp_path):
    images = lfw_tree(tmp_path / "lfw")
    out = tmp_path / "x.bin"
    out.write_bytes(b"old")
    pairs = [(str(tmp_path / "lfw" / "Ann_Lee" / "Ann_Lee_0001.jpg"),
              str(tmp_path / "lfw" / "Bo_Ng" / "Bo_Ng_0001.jpg"), False),
             (str(tmp_path / "lfw" / "Ann_Lee" / "Ann_Lee_0001.jpg"), str(tmp_path / "gone.jpg"), False)]
    with pytest.raises(BinError, match="gone.jpg: missing image"):
        make_bin(pairs, str(out), progress=None)
    assert out.read_bytes() == b"old"
    assert make_bin(pairs[:1], str(out), progress=None) == {"pairs": 1, "same": 0, "images": 2,
                                                             "bytes": out.stat().st_size}
    assert load_pairs(str(out))[0] == [images[("Ann_Lee", 1)], images[("Bo_Ng", 1)]]


# ---- images stored as uint8 arrays (as some of insightface's tools write them) ----------------------------

def as_arrays(images, shape):
    """Each encoded image as a numpy uint8 array of its bytes: shape (n,) or (n, 1) (what cv2.imencode gives)."""
    flat = [np.frombuffer(b, dtype=np.uint8).copy() for b in images]
    return flat if shape == "(n,)" else [a.reshape(-1, 1) for a in flat]


@pytest.mark.parametrize("shape", ["(n,)", "(n, 1)"])
def test_uint8_array_images_load_as_the_same_bytes(tmp_path, capsys, shape):
    images = [jpeg(i) for i in range(4)]
    path = tmp_path / "arrays.bin"
    # Written as such tools write it: plain pickle, issame a numpy bool array.
    path.write_bytes(pickle.dumps((as_arrays(images, shape), np.array([True, False])), protocol=2))
    got, issame = load_pairs(str(path))
    assert got == images and all(type(b) is bytes for b in got) and issame.tolist() == [True, False]
    status, out, _ = run_cli(["make-bin", "--check", path], capsys)
    assert status == 0 and "2 pairs (1 same identity), every image decodes" in out


class _Call:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.mark.parametrize("case,message", [
    ("float32", "image 1 is a numpy array of float32, shape (631,)"),
    ("int16", "image 1 is a numpy array of int16"),
    ("pixels", "image 1 is a numpy array of uint8, shape (16, 20, 3)"),
    ("wide", "image 1 is a numpy array of uint8, shape (2, 400)"),
    ("object", "image 1 is a numpy array of object"),
    ("object_with_call", "refusing to load posix.mkdir"),
    ("call_in_issame", "refusing to load posix.mkdir"),
])
def test_other_arrays_and_calls_are_refused_without_running_code(tmp_path, capsys, case, message):
    marker = str(tmp_path / "ran")
    good = np.frombuffer(jpeg(0), dtype=np.uint8)
    second = {
        "float32": np.zeros(631, np.float32),
        "int16": good.astype(np.int16),
        "pixels": cv2.imdecode(good, cv2.IMREAD_COLOR),
        "wide": np.zeros((2, 400), np.uint8),
        "object": np.array([jpeg(1), jpeg(2)], dtype=object),
        "object_with_call": np.array([_Call(marker), jpeg(2)], dtype=object),
        "call_in_issame": good,
    }[case]
    issame = [_Call(marker)] if case == "call_in_issame" else [True]
    path = tmp_path / "x.bin"
    path.write_bytes(pickle.dumps(([good, second], issame), protocol=4))
    with pytest.raises(BinError) as e:
        load_pairs(str(path))
    assert message in str(e.value) and str(path) in str(e.value)
    status, _, err = run_cli(["make-bin", "--check", path], capsys)
    assert status == 1 and message in one_line_error(err)
    assert not os.path.exists(marker)
    if "call" in case:  # the same bytes do run the call under plain pickle, so the test can fail
        pickle.loads(path.read_bytes())
        assert os.path.exists(marker)


def test_distinct_images_are_counted_by_content(tmp_path, capsys):
    images = lfw_tree(tmp_path / "img")
    # The same photo under a second name: one image, not two; and stored once in the pickle.
    (tmp_path / "img" / "copy.jpg").write_bytes(images[("Ann_Lee", 1)])
    (tmp_path / "pairs.lst").write_text("Ann_Lee/Ann_Lee_0001.jpg copy.jpg 1\nBo_Ng/Bo_Ng_0001.jpg copy.jpg 0\n")
    status, out, _ = run_cli(["make-bin", "--pairs", tmp_path / "pairs.lst", "--root", tmp_path / "img",
                              "--output", tmp_path / "c.bin"], capsys)
    assert status == 0 and "2 pairs (1 same identity), 2 distinct images" in out
    got, _ = load_pairs(str(tmp_path / "c.bin"))
    a, b = images[("Ann_Lee", 1)], images[("Bo_Ng", 1)]
    assert got == [a, a, b, a]
    assert (tmp_path / "c.bin").stat().st_size < len(a) + len(b) + 256
