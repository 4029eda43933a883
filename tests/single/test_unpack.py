import os
import subprocess
import sys

import mxnet as mx
import pytest

from partial_fc.unpack import unpack

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write_rec(folder, items, insightface=True, vector=False, first_key=None):
    """items: list of (label, bytes). The insightface layout puts a header at key 0 and identity records last."""
    os.makedirs(folder, exist_ok=True)
    w = mx.recordio.MXIndexedRecordIO(os.path.join(folder, "train.idx"), os.path.join(folder, "train.rec"), "w")
    first = (1 if insightface else 0) if first_key is None else first_key
    for i, (label, data) in enumerate(items):
        lab = [float(label), 0.0] if vector else float(label)
        w.write_idx(first + i, mx.recordio.pack(mx.recordio.IRHeader(0, lab, first + i, 0), data))
    if insightface:
        end = 1 + len(items)
        ids = sorted({lab for lab, _ in items})
        for j, c in enumerate(ids):  # identity records: label = (first key, last key + 1) of the class
            keys = [1 + i for i, (lab, _) in enumerate(items) if lab == c]
            w.write_idx(end + j, mx.recordio.pack(mx.recordio.IRHeader(2, [keys[0], keys[-1] + 1], 0, 0), b""))
        w.write_idx(0, mx.recordio.pack(mx.recordio.IRHeader(2, [end, end + len(ids)], 0, 0), b""))
    w.close()


JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 3
PNG = b"\x89PNG\r\n\x1a\n" + b"abc" * 50


@pytest.mark.parametrize("insightface,vector", [(True, False), (False, False), (False, True)])
def test_unpack_writes_raw_bytes_per_identity(tmp_path, insightface, vector):
    items = [(0, JPEG), (0, JPEG + b"1"), (2, PNG), (1, JPEG + b"22")]
    write_rec(tmp_path / "a", items, insightface, vector)
    stats = unpack([str(tmp_path / "a")], str(tmp_path / "out"), progress=None)
    assert stats == {"images": 4, "identities": 3}
    got = {}
    for d in sorted(os.listdir(tmp_path / "out")):
        for f in sorted(os.listdir(tmp_path / "out" / d)):
            got.setdefault(int(d), []).append((f[-4:], (tmp_path / "out" / d / f).read_bytes()))
    assert got == {0: [(".jpg", JPEG), (".jpg", JPEG + b"1")], 1: [(".jpg", JPEG + b"22")], 2: [(".png", PNG)]}


def test_im2rec_keys_need_not_start_at_zero(tmp_path):
    write_rec(tmp_path / "a", [(0, JPEG), (1, PNG)], insightface=False, first_key=100)
    assert unpack([str(tmp_path / "a")], str(tmp_path / "out"), progress=None) == {"images": 2, "identities": 2}


def test_two_datasets_get_distinct_identity_folders(tmp_path):
    write_rec(tmp_path / "a", [(0, JPEG), (1, JPEG)])
    write_rec(tmp_path / "b", [(0, PNG), (1, PNG)])
    stats = unpack([str(tmp_path / "a"), str(tmp_path / "b")], str(tmp_path / "out"), progress=None)
    assert stats["identities"] == 4
    assert sorted(os.listdir(tmp_path / "out")) == ["00000000", "00000001", "00000002", "00000003"]


def test_script_reports_a_missing_idx(tmp_path):
    write_rec(tmp_path / "a", [(0, JPEG)])
    os.remove(tmp_path / "a" / "train.idx")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "unpack_glint360k.py"), "--include", str(tmp_path / "a"),
                        "--output", str(tmp_path / "out")], capture_output=True, text=True)
    assert r.returncode != 0
    assert "train.idx: missing" in r.stderr
