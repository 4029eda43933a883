"""`partial-fc bench fc` end to end on a tiny problem: the JSON's structure and its internal consistency
(phases sum to the step, the lower bound is the formula it states), never its timings."""
import io
import json
import math
import subprocess
import sys
import time

import pytest

from partial_fc.head import precision
from partial_fc.bench import common, fc
from partial_fc.cli import main


def test_bench_fc_json():
    cmd = [sys.executable, "-m", "partial_fc.cli", "bench", "fc",
           "--n-local", "1000", "--batch", "8", "--dim", "16", "--repeat", "2", "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)

    assert report["benchmark"] == "fc"
    assert report["config"]["n_local"] == [1000] and report["config"]["rates"] == [1.0, 0.3, 0.1]
    assert report["config"]["bank_dtype"] == "float32"
    assert report["machine"]["cpu_count"] >= 1 and "OMP_NUM_THREADS" in report["machine"]["thread_settings"]
    assert report["skipped"] == []
    rows = report["results"]
    assert [(r["n_local"], r["rate"]) for r in rows] == [(1000, 1.0), (1000, 0.3), (1000, 0.1)]
    assert [r["sampled"] for r in rows] == [1000, 300, 100]
    for r in rows:
        for key in ("step_s", "ratio", "ratio_paired", "ratio_ceiling", "sampler_s", "sampler_share", "gflops",
                    "numpy_gflops", "phased_step_s", "matmul_phase_s", "matmul_gflops", "matmul_share", "bound_s",
                    "of_bound", "mxnet_dot_gflops"):
            assert math.isfinite(r[key]) and r[key] > 0, (key, r[key])
        assert len(r["step_times_s"]) == 2 and len(r["phased_steps"]) == 2
        # The operator reports every phase of the agreed interface, and nothing else.
        assert set(fc.PHASES) <= set(r["phases_s"]) <= set(fc.PHASES) | {"other"}
        for phases in r["phased_steps"]:
            assert sum(v for k, v in phases.items() if k != "total") == pytest.approx(phases["total"], rel=1e-9)
        # The lower bound is exactly the formula the docstring gives.
        assert r["bound_compute_s"] == pytest.approx(fc.MATMULS_PER_STEP * r["numpy_matmul_s"])
        assert r["bound_bytes"] == fc.BANK_PASSES * r["sampled"] * 16 * precision.itemsize("float32")
        assert r["bound_bandwidth_s"] == pytest.approx(r["bound_bytes"] / (report["memcpy_gb_s"] * 1e9))
        assert r["bound_s"] == max(r["bound_compute_s"], r["bound_bandwidth_s"])
        assert r["of_bound"] == pytest.approx(r["bound_s"] / r["step_s"])
        assert r["matmul_gflops"] == pytest.approx(r["matmul_gflop"] / r["matmul_phase_s"])
        assert r["matmul_share"] == pytest.approx(r["matmul_gflops"] / r["numpy_gflops"])
    assert rows[0]["ratio"] == 1.0 and rows[0]["ratio_paired"] == 1.0 and rows[2]["ratio_ceiling"] == 10.0
    for r in rows:
        pairs = sorted(a / b for a, b in zip(rows[0]["step_times_s"], r["step_times_s"]))
        assert r["ratio_paired"] == pytest.approx((pairs[0] + pairs[1]) / 2)  # the median of the 2 repeats
    # The ratio target is for N_local = 1e6 only; the sampler's at r = 0.1; the matmul share's everywhere.
    names = sorted((t["name"], t["rate"]) for t in report["targets"])
    assert names == [("matmul_share", 0.1), ("matmul_share", 0.3), ("matmul_share", 1.0), ("sampler_share", 0.1)]
    assert all(isinstance(t["pass"], bool) for t in report["targets"])


def test_bench_fc_float16_bank_and_table():
    out = io.StringIO()
    report = fc.benchmark(n_local=[500], batch=4, dim=8, rates=[1.0, 0.5], repeat=1, bank_dtype="float16",
                    out=out, log=io.StringIO())
    assert report["config"]["bank_dtype"] == "float16"
    assert [r["bound_bytes"] for r in report["results"]] == [5 * 500 * 8 * 2, 5 * 250 * 8 * 2]
    text = out.getvalue()
    for line in ("step (plain", "phases of the phased step", "throughput and lower bound", "thread settings: ",
                 "mxnet's blas: "):
        assert line in text
    assert "matmul>=70%" in text


def test_steal_share_reads_proc_stat_and_flags_a_noisy_run(tmp_path, monkeypatch):
    # cpu user nice system idle iowait irq softirq steal guest guest_nice
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 20 500 10 0 0 0 0 0\ncpu0 50 0 10 250 5 0 0 0 0 0\n")
    real_open = open
    monkeypatch.setattr("builtins.open", lambda p, *a, **k: real_open(stat if p == "/proc/stat" else p, *a, **k))
    before = common.cpu_times()
    assert before == (0, 120)  # idle and iowait are not wanted time
    stat.write_text("cpu  160 0 30 900 10 0 0 30 0 0\n")
    after = common.cpu_times()
    assert after == (30, 220)
    assert common.steal_share(before, after) == pytest.approx(30 / 100)
    assert common.steal_share(after, after) is None and common.steal_share(None, after) is None
    stat.write_text("intr 1 2 3\n")
    assert common.cpu_times() is None
    monkeypatch.undo()

    m = common.machine_info()
    assert m["cpu_steal_share"] is None or 0.0 <= m["cpu_steal_share"] <= 1.0
    lines = common.machine_lines({**m, "cpu_steal_share": 0.25})
    assert lines[-1] == ("cpu time stolen by the hypervisor during the run: 25.0% "
                         "(noisy: other guests held this machine's cores)")
    assert common.machine_lines({**m, "cpu_steal_share": 0.001})[-1].endswith("during the run: 0.1%")
    assert not any("stolen" in line for line in common.machine_lines({**m, "cpu_steal_share": None}))


def test_bench_fc_skips_what_does_not_fit(monkeypatch):
    monkeypatch.setattr(common, "available_memory", lambda: 1 << 20)
    out, log = io.StringIO(), io.StringIO()
    report = fc.benchmark(n_local=[1000], batch=8, dim=16, rates=[1.0, 0.1], repeat=1, out=out, log=log)
    assert report["results"] == [] and report["targets"] == []
    [skip] = report["skipped"]
    need = fc.step_bytes(1000, 16, [1.0, 0.1], 8, "float32")
    assert skip["needs_bytes"] == need and need > fc.bank_bytes(1000, 16, "float32")
    assert skip["message"] == f"skipped: needs {need / 2**30:.1f} GiB, 0.0 available"
    assert skip["message"] in out.getvalue() and skip["message"] in log.getvalue()


class _StubOp:
    """Times its work through its clock like the operator: some phases twice, then work outside every phase."""
    clock = None

    def __init__(self, fail=False):
        self.fail = fail

    def forward_backward(self, features, labels, step):
        for name in ("exchange", "matmul", "softmax", "matmul"):
            with self.clock.phase(name):
                time.sleep(0.002)
        if self.fail:
            raise RuntimeError("boom")
        return None

    def update(self, out, lr):
        with self.clock.phase("update"):
            time.sleep(0.002)
        time.sleep(0.003)  # outside every phase: "other"


def test_phased_step_accumulates_repeated_phases_and_sums_to_the_step():
    op = _StubOp()
    phases = fc.time_phased_step(op, None, None, 0)
    assert list(phases) == ["exchange", "matmul", "softmax", "update", "other", "total"]
    assert phases["matmul"] >= 0.004  # two calls of >= 2 ms each are added up
    assert phases["other"] >= 0.003
    assert sum(v for k, v in phases.items() if k != "total") == pytest.approx(phases["total"], rel=1e-9)
    assert op.clock is None
    medians = fc.median_phases([phases, {"exchange": 1.0, "total": 1.0}])
    assert list(medians) == ["exchange", "matmul", "softmax", "update", "other"]
    assert medians["exchange"] == pytest.approx((phases["exchange"] + 1.0) / 2)
    assert medians["matmul"] == pytest.approx(phases["matmul"] / 2)  # missing in a step counts 0 there


def test_phased_step_removes_the_clock_when_the_step_fails():
    op = _StubOp(fail=True)
    with pytest.raises(RuntimeError):
        fc.time_phased_step(op, None, None, 0)
    assert op.clock is None


@pytest.mark.parametrize("argv", [
    [],
    ["bench"],
    ["bench", "nope"],
    ["bench", "fc", "--rates", "1.0,0"],
    ["bench", "fc", "--n-local", "1.5"],
    ["bench", "fc", "--batch", "x"],
    ["bench", "fc", "--n-local", "1000,"],
    ["bench", "fc", "--unknown"],
    ["bench", "fc", "--bank-dtype", "int8"],
    ["bench", "sampler", "--rate", "2"],
    ["bench", "sampler", "--n-local", "0"],
    ["bench", "comm", "--batch", "0"],
    ["bench", "comm", "--fc-rate", "0"],
    ["bench", "memory", "--dtypes", "float32,float64"],
    ["bench", "memory", "--rates", ""],
])
def test_bad_arguments_are_one_line_errors(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("partial-fc") and "error:" in err and err.count("\n") == 1, err
