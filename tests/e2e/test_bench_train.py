"""`partial-fc bench train` and its --test-io reader comparison at tiny sizes: the report's structure, its
numbers consistent with each other and with the trainer's metrics, and the premises of the comparison
(ImageRecordIter cannot read an insightface rec; on the copy it yields exactly our reader's pixels).
Never timing thresholds."""
import io
import json
import os
import statistics
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest

from partial_fc.data import loader as data, synth
from partial_fc.training import trainer
from partial_fc.bench import common, peak_rss, train as bench
from partial_fc.bench.common import BenchError
from partial_fc.dist import LocalComm

BIN = os.path.dirname(sys.executable)


def _cli(*args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PFC_")}
    return subprocess.run([os.path.join(BIN, "partial-fc"), *args], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=300, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """A tiny insightface-layout dataset: 2 identities x 24 images."""
    out = tmp_path_factory.mktemp("bench_io") / "data"
    synth.write_dataset(str(out), identities=2, images_per_identity=24, val_pairs=2, progress=False)
    return out


def test_train_bench_one_worker_report_is_consistent(tmp_path):
    out, log = io.StringIO(), io.StringIO()
    report = bench.benchmark([1000], [0.5, 1.0], workers=1, batch=2, dim=8, warmup=1, steps=2, omp_threads=1,
                       as_json=True, out=out, log=log, workdir=str(tmp_path))
    assert json.loads(out.getvalue()) == json.loads(json.dumps(report))
    assert report["config"]["launcher"].startswith("none") and report["skipped"] == []
    assert os.listdir(tmp_path) == []  # the runs' folders are removed
    rows = {r["rate"]: r for r in report["results"]}
    assert sorted(rows) == [0.5, 1.0]
    for r in rows.values():
        assert (r["classes"], r["n_local"], r["workers"]) == (1000, 1000, 1)
        assert len(r["step_times_s"]) == len(r["fc_times_s"]) == 2
        assert r["step_s"] == statistics.median(r["step_times_s"])
        assert r["fc_s"] == statistics.median(r["fc_times_s"])
        assert r["samples_per_s"] == pytest.approx(2 * 1 / r["step_s"])
        assert r["fc_share"] == pytest.approx(r["fc_s"] / r["step_s"])
        assert r["rest_s"] == pytest.approx(r["step_s"] - r["fc_s"])
        # The head is timed inside the step it belongs to.
        assert all(0 < f < s for f, s in zip(r["fc_times_s"], r["step_times_s"]))
        assert r["ref_rate"] == 1.0
        # The trainer's peak RSS: at least the MXNet it imported and the backbone it trained.
        assert len(r["peak_rss_bytes"]) == 1 and r["peak_rss_max_bytes"] == r["peak_rss_bytes"][0] > 200 << 20
    assert rows[0.5]["sampled"] == 500 and rows[1.0]["sampled"] == 1000
    assert rows[1.0]["vs_ref"] == 1.0 and rows[1.0]["fc_ratio"] == 1.0
    assert rows[0.5]["vs_ref"] == pytest.approx(rows[0.5]["samples_per_s"] / rows[1.0]["samples_per_s"])
    assert rows[0.5]["fc_ratio"] == pytest.approx(rows[1.0]["fc_s"] / rows[0.5]["fc_s"])
    assert "N=1,000 r=0.5: step" in log.getvalue()  # the trainer's progress is passed on

    table = bench.format_table(report)
    assert "samples/s" in table and "FC %" in table and "OMP_NUM_THREADS=1" in table
    assert "peak RSS GiB/rank" in table and f"{rows[1.0]['peak_rss_bytes'][0] / 2**30:.2f}" in table
    assert sum(line.lstrip().startswith("1,000") for line in table.splitlines()) == 2


@pytest.mark.parametrize("rank", [None, "1"])
def test_peak_rss_wrapper_reports_what_its_command_held(tmp_path, rank):
    # The command touches 300 MiB and exits 3: the wrapper reports at least that, not much more (a Python with
    # numpy), under the launcher's rank, and exits with the command's status; bench train reads it back.
    env = {k: v for k, v in os.environ.items() if k not in ("HOROVOD_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK")}
    if rank is not None:
        env["HOROVOD_RANK"] = rank
    touch = "import numpy, sys; a = numpy.ones(300 << 18, dtype=numpy.float32); sys.exit(3)"
    p = subprocess.run([sys.executable, "-m", "partial_fc.bench.peak_rss", str(tmp_path), sys.executable, "-c", touch],
                       env=env, timeout=120)
    assert p.returncode == 3
    [name] = os.listdir(tmp_path)
    assert name == f"rank{rank or 0}.json"
    got = json.loads((tmp_path / name).read_text())
    assert got["rank"] == int(rank or 0) and got["returncode"] == 3
    assert 300 << 20 <= got["peak_rss_bytes"] < (300 + 200) << 20
    if rank is None:
        assert peak_rss.read(str(tmp_path), 1) == [got["peak_rss_bytes"]]


def test_points_that_do_not_fit_in_memory_are_skipped_not_run(monkeypatch):
    monkeypatch.setattr(common, "available_memory", lambda: 1 << 20)
    monkeypatch.setattr(bench.subprocess, "Popen", None)  # launching anything would fail the test
    out = io.StringIO()
    report = bench.benchmark([1000, 2000], [1.0, 0.1], workers=2, batch=4, dim=8, out=out, log=io.StringIO())
    assert report["results"] == []
    assert [(s["classes"], s["rates"]) for s in report["skipped"]] == [(1000, [1.0]), (1000, [0.1]), (2000, [1.0]),
                                                                      (2000, [0.1])]
    assert all(s["needs_bytes"] > s["available_bytes"] == 1 << 20 for s in report["skipped"])
    assert out.getvalue().count("skipped: needs") == 4


def test_timed_steps_come_from_the_metrics_file(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [{"step": s, "loss": 1.0, "samples_per_s": 8.0 / s, "fc_s": 0.1 * s} for s in (1, 2, 3, 4)]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines) + json.dumps({"step": 4, "val/x": 0.5}) + "\n")
    steps, fcs = bench._timed_steps(str(path), 8, 1, 2, "here")
    assert steps == pytest.approx([2.0, 3.0]) and fcs == pytest.approx([0.2, 0.3])
    with pytest.raises(BenchError, match="2 of the 3 timed steps"):
        bench._timed_steps(str(path), 8, 2, 3, "here")


def test_head_timer_waits_only_when_profiling(monkeypatch):
    calls = []
    monkeypatch.setattr(mx.nd, "waitall", lambda: calls.append("wait"))
    off = trainer._HeadTimer(False, LocalComm())
    assert off(lambda a, b: a + b, 2, 3) == 5 and calls == [] and off.seconds == 0.0
    on = trainer._HeadTimer(True, LocalComm())
    assert on(lambda a: a * 2, 4) == 8 and on(lambda: None) is None
    assert calls == ["wait"] * 4 and on.seconds > 0


def test_bad_train_bench_settings_are_one_line_errors():
    p = _cli("bench", "train", "--workers", "3", "--classes", "2")
    assert p.returncode == 1 and p.stderr.strip() == \
        "partial-fc: error: 2 classes cannot be split over 3 workers"
    p = _cli("bench", "train", "--workers", "1", "--classes", "100", "--network", "nope", "--steps", "1")
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 1 and lines[-1].startswith("partial-fc: error: bench train: N=100 r=1: the trainer "
                                                      "exited with status")
    assert "'nope' is not a known network" in lines[-1]


def test_image_record_iter_cannot_read_an_insightface_rec(faces):
    # The reason the comparison reads a copy: record 0 is a header with an empty image.
    with pytest.raises(mx.base.MXNetError, match="buf.empty"):  # its constructor reads the first batch
        mx.io.ImageRecordIter(path_imgrec=str(faces / "train.rec"), data_shape=(3, 112, 112), batch_size=4)


def test_the_copy_gives_image_record_iter_exactly_our_pixels(faces, tmp_path):
    with data.open_rec(faces) as ds:
        rec = bench.copy_images(ds, 8, str(tmp_path / "copy"))
        expected = np.stack([data._decode(ds.read(i))[:, :, ::-1].transpose(2, 0, 1) for i in range(8)])
        labels = ds.labels[:8]
    with data.open_rec(rec) as copy:
        assert copy.layout == "im2rec" and len(copy) == 8 and list(copy.labels) == list(labels)
    it = mx.io.ImageRecordIter(path_imgrec=rec, path_imgidx=rec[:-4] + ".idx", data_shape=(3, 112, 112),
                               batch_size=8, preprocess_threads=1)
    batch = next(it)
    got = batch.data[0].asnumpy()
    assert got.dtype == np.float32 and got.shape == (8, 3, 112, 112)
    np.testing.assert_array_equal(got, expected.astype(np.float32))  # RGB, CHW, 0..255, same decoder output
    np.testing.assert_array_equal(batch.label[0].asnumpy(), labels)


def test_io_bench_report_is_consistent(faces, tmp_path):
    out = io.StringIO()
    report = bench.benchmark_io(str(faces), batch=4, threads=[1, 2], batches=2, repeat=3, as_json=True, out=out,
                          log=io.StringIO(), workdir=str(tmp_path))
    assert json.loads(out.getvalue()) == json.loads(json.dumps(report))
    assert report["config"]["images"] == 12 and report["config"]["source_rec_layout"] == "insightface"
    rows = report["results"]
    assert [(r["flip"], r["reader"]["threads"]) for r in rows] == [(False, 1), (False, 2), (True, 1), (True, 2)]
    for r in rows:
        for side in (r["reader"], r["image_record_iter"]):
            assert side["images"] == 12 and side["shape"] == [4, 3, 112, 112] and side["dtype"] == "float32"
            assert side["images_per_s"] == pytest.approx(side["images"] / side["seconds"])
            assert len(side["seconds_all"]) == 3 and side["seconds"] == statistics.median(side["seconds_all"])
        assert r["image_record_iter"]["threads"] == bench.image_record_iter_threads(r["reader"]["threads"])
        assert r["equal_threads"] == (r["reader"]["threads"] == r["image_record_iter"]["threads"])
        assert r["ratio"] == pytest.approx(r["reader"]["images_per_s"] / r["image_record_iter"]["images_per_s"])
    assert os.listdir(tmp_path) == []
    table = bench.format_io_table(report)
    assert "ImageRecordIter img/s" in table
    assert [line.split()[:2] for line in table.splitlines() if line.split()[:1] in (["no"], ["yes"])] == \
        [["no", "1"], ["no", "2"], ["yes", "1"], ["yes", "2"]]


def test_io_bench_too_few_images_is_an_error(faces):
    with pytest.raises(BenchError, match=r"train\.rec: 48 images, fewer than the 64"):
        bench.benchmark_io(str(faces), batch=8, threads=[1], batches=7, repeat=1, out=io.StringIO(), log=io.StringIO())


def test_io_bench_writes_synthetic_data_without_a_data_dir():
    p = _cli("bench", "train", "--test-io", "--batch", "2", "--batches", "1", "--threads", "1", "--repeat", "1",
             "--json")
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    assert report["config"]["data"].startswith("synthetic") and len(report["results"]) == 2
