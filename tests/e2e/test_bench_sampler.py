"""`partial-fc bench sampler` on tiny shards: rows, the share's definition and the n/a rule, never timings."""
import io
import json
import subprocess
import sys

from partial_fc.bench import common, fc, sampler
from partial_fc.head.sampler import num_sampled


def test_sampler_rows_and_share():
    out = io.StringIO()
    report = sampler.benchmark(n_local=[1000, 4000], rate=0.1, batch=8, dim=16, repeat=3, step_repeat=1,
                         out=out, log=io.StringIO())
    assert report["benchmark"] == "sampler" and report["config"]["rate"] == 0.1
    rows = report["results"]
    assert [r["n_local"] for r in rows] == [1000, 4000]
    for r in rows:
        assert r["sampled"] == num_sampled(r["n_local"], 0.1, 8)
        assert r["sampler_s"] > 0 and r["step_s"] > 0
        assert r["share"] == r["sampler_s"] / r["step_s"]
    assert report["targets"] == []  # the target is for N_local = 1e7
    assert "sampler ms" in out.getvalue() and "1,000" in out.getvalue()


def test_share_is_na_when_the_step_cannot_run(monkeypatch):
    monkeypatch.setattr(common, "available_memory", lambda: 0)
    monkeypatch.setitem(sampler.TARGET, "n_local", 2000)
    out = io.StringIO()
    report = sampler.benchmark(n_local=[2000], rate=0.1, batch=8, dim=16, repeat=2, out=out, log=io.StringIO())
    [row] = report["results"]
    assert row["sampler_s"] > 0
    assert row["step_s"] is None and row["share"] is None
    assert row["step_note"].startswith("skipped: needs ")
    [target] = report["targets"]
    assert target["value"] is None and target["pass"] is None  # never a number computed against another step
    assert "n/a" in out.getvalue() and "share<=2% n/a" in out.getvalue()


def test_sampler_cli_json_without_step():
    cmd = [sys.executable, "-m", "partial_fc.cli", "bench", "sampler", "--n-local", "1000,2000", "--batch", "8",
           "--repeat", "2", "--no-step", "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [(r["n_local"], r["step_s"], r["share"]) for r in report["results"]] == [(1000, None, None),
                                                                                 (2000, None, None)]
    assert report["machine"]["cpu_count"] >= 1


def test_share_is_bounded_by_the_same_sized_full_step_when_the_step_does_not_fit(monkeypatch):
    n, rate, batch, dim = 20_000, 0.1, 8, 16
    S = num_sampled(n, rate, batch)
    fits = fc.step_bytes(S, dim, [1.0], batch, "float32")
    assert fits < fc.step_bytes(n, dim, [rate], batch, "float32")
    monkeypatch.setattr(common, "available_memory", lambda: fits)  # the bound's step fits, the real one not
    monkeypatch.setitem(sampler.TARGET, "n_local", n)
    timed = []
    real = sampler._step_time

    def spy(n_local, r, *args):
        timed.append((n_local, r))
        return real(n_local, r, *args)

    monkeypatch.setattr(sampler, "_step_time", spy)
    out = io.StringIO()
    report = sampler.benchmark(n_local=[n], rate=rate, batch=batch, dim=dim, repeat=2, step_repeat=1, out=out,
                         log=io.StringIO())
    [row] = report["results"]
    assert timed == [(S, 1.0)]  # only the full step over S rows ran, never the real one
    assert row["step_s"] is None and row["share"] is None and row["share_bound"] > 0
    [target] = report["targets"]
    assert target["upper_bound"] and target["value"] == row["share_bound"]
    assert f"<= {row['share_bound']:.2%}" in out.getvalue() and "upper bound" in out.getvalue()
