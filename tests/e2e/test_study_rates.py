"""`partial-fc study rates`, small: two rates of a tiny run under horovodrun -np 2. Each row must be what its run
wrote (the final loss and accuracies of its metrics.jsonl), the runs must differ in r alone (their config.json
otherwise equal), and the kept-centers column must follow the sampler's rule."""
import json
import os
import subprocess
import sys

BIN = os.path.dirname(sys.executable)


def _env(tmp_path, **pfc):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PFC_")}
    env.update(PATH=f"{BIN}:{env.get('PATH', '')}", OMP_NUM_THREADS="1", MXNET_CPU_WORKER_NTHREADS="1",
               HOROVOD_FUSION_THRESHOLD="0", TMPDIR=str(tmp_path), **pfc)
    return env


def test_two_rates_of_one_run_side_by_side(tmp_path):
    data = tmp_path / "data"
    synth = subprocess.run([os.path.join(BIN, "partial-fc"), "synth", "--output", str(data), "--identities", "40",
                            "--images-per-identity", "2", "--pairs", "20", "--quiet"],
                           env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert synth.returncode == 0, synth.stderr
    # 40 classes over 2 ranks: 20 per shard; r = 0.5 keeps max(10, #positives) of them, the global batch of
    # 2 x 4 images brings at most 8 positives.
    env = _env(tmp_path, PFC_DATA_DIR=str(data), PFC_NETWORK="mbf", PFC_EMBEDDING_SIZE="16", PFC_BATCH_SIZE="4",
               PFC_MAX_STEPS="4", PFC_LR_STEPS="", PFC_FREQUENT="2", PFC_VERBOSE="4", PFC_TENSORBOARD="0",
               PFC_SAVE_CHECKPOINTS="0", PFC_EVAL_BATCH_SIZE="8", PFC_DATA_THREADS="1")
    out = tmp_path / "study"
    cmd = [os.path.join(BIN, "partial-fc"), "study", "rates", "--rates", "0.5,1.0", "--output", str(out), "--json",
           "--", "partial-fc", "train"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr[-3000:]
    report = json.loads(p.stdout)
    rows = report["results"]
    assert [r["rate"] for r in rows] == [1.0, 0.5]  # largest first: the reference

    for row in rows:
        records = [json.loads(l) for l in open(os.path.join(row["output"], "metrics.jsonl"))]
        losses = [r for r in records if "loss" in r]
        checks = [r for r in records if "val/synth_val/accuracy" in r]
        assert row["steps"] == 4 and row["final_loss"] == losses[-1]["loss"]
        assert row["accuracy"] == {"synth_hard": checks[-1]["val/synth_hard/accuracy"],
                                   "synth_val": checks[-1]["val/synth_val/accuracy"]}
        assert len(row["peak_rss_bytes"]) == 2 and min(row["peak_rss_bytes"]) > 0
        assert json.load(open(os.path.join(row["output"], "config.json")))["sample_rate"] == row["rate"]
    full, half = rows
    configs = [json.load(open(os.path.join(r["output"], "config.json"))) for r in rows]
    for c in configs:
        del c["sample_rate"], c["output"]
    assert configs[0] == configs[1]  # the runs differ in r alone
    assert full["kept_rows"] == 20 and full["negatives_seen"] == 1.0
    assert 10 <= half["kept_rows"] <= 10 + 8 and 1 <= half["kept_positives"] <= 8
    assert abs(half["kept_positives"] + half["kept_negatives"] - half["kept_rows"]) < 1e-9
    assert half["accuracy_gap"] == {k: half["accuracy"][k] - full["accuracy"][k] for k in full["accuracy"]}
    assert half["vs_ref"] == half["samples_per_s"] / full["samples_per_s"]

    # The table is the same report; a second study into the same folder is refused unless asked to replace it.
    again = subprocess.run(cmd[:-3], env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 1 and "--overwrite" in again.stderr and len(again.stderr.splitlines()) == 1
