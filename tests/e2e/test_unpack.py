import os
import subprocess
import sys

import mxnet as mx
import pytest

from partial_fc.data.unpack import unpack

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


# ---- partial-fc unpack: the CLI, --md5 and bad input ------------------------------------------------------

import hashlib  # noqa: E402

from partial_fc.data.unpack import GLINT360K_MD5, parse_md5  # noqa: E402
from support.cli import one_line_error, run_cli  # noqa: E402



def md5_of(path):
    return hashlib.md5(open(path, "rb").read()).hexdigest()



def test_cli_unpack_is_registered(tmp_path, capsys):
    write_rec(tmp_path / "a", [(0, JPEG), (1, PNG)])
    status, out, _ = run_cli(["unpack", "--include", tmp_path / "a", "--output", tmp_path / "out"], capsys)
    assert status == 0 and "wrote 2 images of 2 identities" in out
    assert (tmp_path / "out" / "00000001" / "000000002.png").read_bytes() == PNG


def test_md5_name_equals_hex_checks_then_unpacks(tmp_path, capsys):
    write_rec(tmp_path / "a", [(0, JPEG), (1, PNG)])
    rec, idx = md5_of(tmp_path / "a" / "train.rec"), md5_of(tmp_path / "a" / "train.idx")
    status, out, _ = run_cli(["unpack", "--include", tmp_path / "a", "--output", tmp_path / "out",
                              "--md5", f"train.rec={rec.upper()},train.idx={idx}"], capsys)
    assert status == 0 and "md5 OK" in out
    assert (tmp_path / "out" / "00000000" / "000000001.jpg").read_bytes() == JPEG


def test_md5_mismatch_names_file_expected_and_actual_and_writes_nothing(tmp_path, capsys):
    write_rec(tmp_path / "a", [(0, JPEG)])
    actual = md5_of(tmp_path / "a" / "train.idx")
    wrong = "0" * 32
    status, _, err = run_cli(["unpack", "--include", tmp_path / "a", "--output", tmp_path / "out",
                              "--md5", f"train.idx={wrong}"], capsys)
    line = one_line_error(err, ignore=("md5 ",))
    assert status == 1
    assert str(tmp_path / "a" / "train.idx") in line and wrong in line and actual in line
    assert not (tmp_path / "out").exists()


def test_md5_sum_file_in_md5sum_format_and_check_only(tmp_path, capsys):
    write_rec(tmp_path / "a", [(0, JPEG)])
    sums = tmp_path / "sums.md5"
    # What `md5sum train.rec train.idx` prints (text mode, then binary mode marker).
    sums.write_text(f"{md5_of(tmp_path / 'a' / 'train.rec')}  train.rec\n"
                    f"{md5_of(tmp_path / 'a' / 'train.idx')} *train.idx\n")
    status, out, _ = run_cli(["unpack", "--include", tmp_path / "a", "--md5", sums], capsys)
    assert status == 0 and "md5 OK" in out and "train.rec" in out and "train.idx" in out
    sums.write_text(f"{'f' * 32}  {tmp_path / 'a' / 'train.rec'}\n")  # a path, not a bare name
    status, _, err = run_cli(["unpack", "--include", tmp_path / "a", "--md5", sums], capsys)
    assert status == 1 and "md5 mismatch" in one_line_error(err, ignore=("md5 ",))


def test_md5_glint360k_preset_holds_the_published_sums(tmp_path, capsys):
    assert parse_md5("glint360k") == {"train.rec": "8483be5af6f9906e19f85dee49132f8e",
                                      "train.idx": "5d9cd9f262ec87a5ca2eac5e703f7cdf"} == GLINT360K_MD5
    write_rec(tmp_path / "a", [(0, JPEG)])
    status, _, err = run_cli(["unpack", "--include", tmp_path / "a", "--md5", "glint360k"], capsys)
    assert status == 1 and "expected 8483be5af6f9906e19f85dee49132f8e" in one_line_error(err, ignore=("md5 ",))


@pytest.mark.parametrize("spec,message", [("train.rec=xyz", "expected NAME=32 hex digits"),
                                          ("nosuchfile.md5", "no such file")])
def test_md5_bad_spec_is_one_line(tmp_path, capsys, spec, message):
    write_rec(tmp_path / "a", [(0, JPEG)])
    status, _, err = run_cli(["unpack", "--include", tmp_path / "a", "--md5", spec], capsys)
    assert status == 1 and message in one_line_error(err, ignore=("md5 ",))


def test_cli_missing_idx_is_one_line(tmp_path, capsys):
    write_rec(tmp_path / "a", [(0, JPEG)])
    os.remove(tmp_path / "a" / "train.idx")
    status, _, err = run_cli(["unpack", "--include", tmp_path / "a", "--output", tmp_path / "out"], capsys)
    assert status == 1 and "train.idx: missing" in one_line_error(err, ignore=("md5 ",))


def test_truncated_rec_is_one_line(tmp_path, capsys):
    write_rec(tmp_path / "a", [(0, JPEG), (1, JPEG + b"x" * 100)], insightface=False)
    rec = tmp_path / "a" / "train.rec"
    rec.write_bytes(rec.read_bytes()[:-60])  # cut into the last image
    status, _, err = run_cli(["unpack", "--include", tmp_path / "a", "--output", tmp_path / "out"], capsys)
    line = one_line_error(err, ignore=("md5 ",))
    assert status == 1 and str(rec) in line and "truncated" in line


def test_label_beyond_the_header_range_is_one_line(tmp_path, capsys):
    write_rec(tmp_path / "a", [(0, JPEG), (1, PNG)])
    # Rewrite the header record to claim a single identity while the images use classes 0 and 1.
    w = mx.recordio.MXIndexedRecordIO(str(tmp_path / "b.idx"), str(tmp_path / "b.rec"), "w")
    r = mx.recordio.MXIndexedRecordIO(str(tmp_path / "a" / "train.idx"), str(tmp_path / "a" / "train.rec"), "r")
    for key in sorted(r.keys):
        w.write_idx(key, r.read_idx(key) if key else mx.recordio.pack(mx.recordio.IRHeader(2, [3, 4], 0, 0), b""))
    w.close()
    r.close()
    os.replace(tmp_path / "b.rec", tmp_path / "a" / "train.rec")
    os.replace(tmp_path / "b.idx", tmp_path / "a" / "train.idx")
    status, _, err = run_cli(["unpack", "--include", tmp_path / "a", "--output", tmp_path / "out"], capsys)
    line = one_line_error(err, ignore=("md5 ",))
    assert status == 1 and "label 1, beyond the 1 identities" in line
