"""`partial-fc bench memory` on a small bank: the analytic size is a real bank's nbytes, the peak sees the
(touched) bank, and the ratios are the formulas printed; never a target."""
import io

import numpy as np
import pytest

from partial_fc.head import memory_bank
from partial_fc.bench import common, memory


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_analytic_size_is_a_real_banks_bytes(dtype):
    bank = memory_bank.MemoryBank.create(300, 24, dtype=dtype)
    real = sum(a.size * np.dtype(a.dtype).itemsize for a in (bank.weight, bank.mom))
    assert memory.fc.bank_bytes(300, 24, dtype) == real == bank.nbytes


def test_memory_rows(monkeypatch):
    # 100,000 x 32 float32 = 25.6 MB of centers + momentum: large against the noise of a child's RSS.
    monkeypatch.setitem(memory.TARGET, "n_local", 100_000)
    out = io.StringIO()
    report = memory.benchmark(n_local=[100_000], rates=[0.1], dtypes=["float32", "float16"], batch=8, dim=32, steps=1,
                              backbones=(), out=out, log=io.StringIO())
    base = report["baseline"]["peak_bytes"]
    assert base > 0 and report["config"]["ratio_counts_baseline"] is True
    f32, f16 = report["results"]
    assert (f32["dtype"], f16["dtype"]) == ("float32", "float16")
    assert f32["analytic_bytes"] == 2 * 100_000 * 32 * 4 == 2 * f16["analytic_bytes"]
    for r in (f32, f16):
        assert r["peak_bytes"] == max(r["create_peak_bytes"], r["steps_peak_bytes"])
        assert r["net_bytes"] == r["peak_bytes"] - base
        assert r["ratio"] == r["peak_bytes"] / r["analytic_bytes"]
        assert r["net_ratio"] == r["net_bytes"] / r["analytic_bytes"]
        assert len(r["step_s"]) == 1
    # The touched bank is resident: the child's peak is at least most of it above the baseline.
    assert f32["net_bytes"] >= 0.9 * f32["analytic_bytes"]
    assert f32["vs_float32"] == 1.0 and f16["vs_float32"] == f16["peak_bytes"] / f32["peak_bytes"]
    assert [(t["dtype"], t["name"], t["max"]) for t in report["targets"]] == [
        ("float32", "peak_ratio", 1.15), ("float16", "vs_float32", 0.55)]
    assert report["targets"][1]["value"] == f16["vs_float32"]
    assert all(t["pass"] == (t["value"] <= t["max"]) for t in report["targets"])
    text = out.getvalue()
    assert "COUNTS the baseline" in text and "100,000" in text and "ratio<=1.15" in text


def test_points_that_do_not_fit_are_skipped(monkeypatch):
    monkeypatch.setattr(common, "available_memory", lambda: 1 << 20)
    out = io.StringIO()
    report = memory.benchmark(n_local=[1000], rates=[0.1], dtypes=["float32"], batch=8, dim=16, steps=1, out=out,
                              backbones=["mbf"], log=io.StringIO())
    assert report["results"] == [] and report["backbone"] == []
    skip, backbone_skip = report["skipped"]
    assert backbone_skip["backbone"] == "mbf" and backbone_skip["message"] in out.getvalue()
    assert (skip["n_local"], skip["rate"], skip["dtype"]) == (1000, 0.1, "float32")
    assert skip["message"].startswith("skipped: needs ") and skip["message"] in out.getvalue()


def _plan_bytes(network, batch, dim):
    """The memory plan of the trainer's CPU graph, bound here as startup.bind_backbone binds it."""
    import mxnet as mx
    import symbols

    sym = symbols.get_symbol(network, embedding_size=dim, prelu_impl="depthwise")
    mod = mx.mod.Module(sym, data_names=["data"], label_names=None, context=mx.cpu())
    mod.bind(data_shapes=[("data", (batch, 3, 112, 112))], for_training=True)
    return memory._plan_bytes(mod._exec_group.execs[0])


def test_backbone_rows():
    out = io.StringIO()
    report = memory.benchmark(n_local=[], rates=[0.1], dim=16, steps=1, backbones=["mbf", "mbf:previous-prelu"],
                              backbone_batches=[4, 2], out=out, log=io.StringIO())
    assert report["results"] == [] and report["config"]["backbone_batches"] == [2, 4]
    rows = {r["backbone"]: r for r in report["backbone"]}
    assert sorted(rows) == ["mbf", "mbf:previous-prelu"]
    for r in rows.values():
        lo, hi = r["points"]
        assert (lo["batch"], hi["batch"]) == (2, 4) and len(lo["step_s"]) == 1
        assert r["per_image_bytes"] == (hi["peak_bytes"] - lo["peak_bytes"]) / 2
        assert r["fixed_bytes"] == lo["peak_bytes"] - 2 * r["per_image_bytes"]
        assert r["plan_per_image_bytes"] == (hi["plan_bytes"] - lo["plan_bytes"]) / 2
        assert r["vs_plan"] == r["per_image_bytes"] / r["plan_per_image_bytes"]
    # Both PReLU forms of mbf have one memory plan; it is the plan of the graph the trainer binds.
    for batch, point in zip((2, 4), rows["mbf"]["points"]):
        assert point["plan_bytes"] == rows["mbf:previous-prelu"]["points"][batch // 2 - 1]["plan_bytes"]
        assert point["plan_bytes"] == _plan_bytes("mbf", batch, 16)
    [target] = report["targets"]
    assert (target["backbone"], target["reference"], target["max"]) == ("mbf", "mbf:previous-prelu", 0.5)
    assert target["value"] == rows["mbf"]["per_image_bytes"] / rows["mbf:previous-prelu"]["per_image_bytes"]
    assert target["pass"] == (target["value"] <= 0.5)
    text = out.getvalue()
    assert "backbone memory of training" in text and "mbf:previous-prelu" in text and "per image GiB" in text


def test_backbone_names_are_checked():
    import argparse

    assert memory.backbone_name("r50:previous-prelu") == "r50:previous-prelu"
    for bad in ("r51", "mbf:other"):
        with pytest.raises(argparse.ArgumentTypeError, match="unknown backbone"):
            memory.backbone_name(bad)
    with pytest.raises(common.BenchError, match="two or more batch sizes"):
        memory.benchmark(n_local=[], backbones=["mbf"], backbone_batches=[4], out=io.StringIO(), log=io.StringIO())
