"""`partial-fc bench scale` at a small scale: 1 M classes on 3 ranks under mpirun, checkpointed, resumed on 2.

What the real run (C = 1e8, W = 64 -> 32) must show, checked here on its structure and its real properties:
every launch completes, the loss is finite at every step and falls on the recurring identities, the resumed
run continues from the saved step at the new world size with the centers re-sharded (its checkpoint has the new
number of shards, the read-back covers every class), each rank's peak RSS is reported, and the plan column is
memory_plan()'s formula for the same settings. The 10 % target itself is printed by the benchmark, never
asserted; no timing threshold either."""
import json
import math
import os
import resource
import subprocess
import sys

from partial_fc.bench import scale
from partial_fc.head.memory_plan import memory_plan

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)
CLASSES, WORKERS, RESUME_WORKERS, STEPS, RESUME_STEPS = 1_000_000, 3, 2, 3, 2  # 3 -> 2: uneven shards, re-sharded
DIM, BATCH, RATE, DTYPE, IDENTITIES = 8, 4, 0.01, "float16", 4


def _env(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PFC_")}
    env.update(PATH=f"{BIN}:{env.get('PATH', '')}", OMP_NUM_THREADS="1", MXNET_CPU_WORKER_NTHREADS="1",
               HOROVOD_FUSION_THRESHOLD="0", TMPDIR=str(tmp_path))
    return env


def _bench(tmp_path, *args, timeout=1200):
    return subprocess.run([os.path.join(BIN, "partial-fc"), "bench", "scale", *args], cwd=ROOT, env=_env(tmp_path),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def test_train_checkpoint_and_resume_resharded(tmp_path):
    p = _bench(tmp_path, "--classes", str(CLASSES), "--workers", str(WORKERS), "--resume-workers", str(RESUME_WORKERS),
               "--steps", str(STEPS), "--resume-steps", str(RESUME_STEPS), "--batch", str(BATCH),
               "--identities", str(IDENTITIES), "--json")
    assert p.returncode == 0, p.stderr[-3000:]
    report = json.loads(p.stdout)
    assert [n for n in os.listdir(tmp_path) if n.startswith("pfc-bench-scale-")] == []  # its work folder is gone
    c = report["config"]
    assert (c["classes"], c["workers"], c["resume_workers"], c["dim"], c["rate"], c["bank_dtype"], c["network"]) == \
        (CLASSES, WORKERS, RESUME_WORKERS, DIM, RATE, DTYPE, "tiny")
    assert "--oversubscribe" in c["launch"] and "btl_tcp_if_include lo" in c["launch"]
    runs = {r["label"]: r for r in report["runs"]}
    assert list(runs) == [f"baseline W={WORKERS}", f"train W={WORKERS}", f"baseline W={RESUME_WORKERS}",
                          f"resume W={RESUME_WORKERS}"]
    for r in runs.values():
        assert r["exit_status"] == 0 and r["error"] is None, r["error"]
        # Every rank's peak RSS, from the wrapper: at least the MXNet process it is.
        assert len(r["peak_rss_bytes"]) == r["workers"] and min(r["peak_rss_bytes"]) > 150 << 20

    train, resume = runs[f"train W={WORKERS}"], runs[f"resume W={RESUME_WORKERS}"]
    # The loss of every step, finite, falling on the recurring identities across the save and the resume.
    assert train["steps"] == list(range(1, STEPS + 1))
    assert resume["steps"] == list(range(STEPS + 1, STEPS + RESUME_STEPS + 1))  # continues from the saved step
    losses = train["losses"] + resume["losses"]
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0] and min(losses[1:]) < 0.8 * losses[0], losses
    # The checkpoint of W shards, re-sharded to W2 ranks: read back whole, and the resumed run saves W2 shards.
    saved, again = train["checkpoint"], resume["checkpoint"]
    assert (saved["step"], saved["world_size"], saved["shards"]) == (STEPS, WORKERS, WORKERS)
    assert (again["step"], again["world_size"], again["shards"]) == (STEPS + RESUME_STEPS, RESUME_WORKERS,
                                                                   RESUME_WORKERS)
    bank = 2 * CLASSES * DIM * 2  # centers + momentum, float16, in the shard files
    assert bank < saved["bytes"] < bank + (4 << 20) and 0 < saved["manifest_bytes"] < saved["bytes"]
    assert saved["save_s"] is not None and saved["save_s"] >= 0
    assert report["load"]["rows"] == CLASSES and report["load"]["workers"] == RESUME_WORKERS

    # The plan column is memory_plan() for the same settings; the ratio is peak / (plan + that rank's baseline).
    for r, w, base in ((train, WORKERS, runs[f"baseline W={WORKERS}"]),
                       (resume, RESUME_WORKERS, runs[f"baseline W={RESUME_WORKERS}"])):
        assert r["plan"] == memory_plan(CLASSES, w, DIM, DTYPE, RATE, BATCH)
        assert r["baseline_rss_bytes"] == base["peak_rss_bytes"]
        assert r["expected_bytes"] == [r["plan"]["total_bytes"] + b for b in base["peak_rss_bytes"]]
        assert r["ratios"] == [pk / e for pk, e in zip(r["peak_rss_bytes"], r["expected_bytes"])]
        assert r["worst_ratio"] in r["ratios"]
    # The baselines hold a head of almost nothing: 16 classes per rank.
    assert runs[f"baseline W={WORKERS}"]["classes"] == 16 * WORKERS

    targets = {t["what"]: t for t in report["targets"]}
    for what in ("every loss finite", "loss falls on the recurring identities (last step < first)",
                 f"resume at W={RESUME_WORKERS} continues from the saved step"):
        assert targets[what]["pass"], targets[what]
    assert all(targets[f"{label}: completed"]["pass"] for label in runs)
    assert f"train W={WORKERS}: every rank's peak RSS within 10% of plan + baseline" in targets  # printed, not judged

    table = scale.format_table(report)
    assert table.startswith(f"partial-fc bench scale: C=1,000,000, W={WORKERS} then resumed at W={RESUME_WORKERS}")
    assert "machine:" in table and "peak RSS MiB" in table and "plan MiB" in table and "peak/(plan+base)" in table
    assert f"{train['plan']['total_bytes'] / 2**20:,.0f}" in table
    assert f"loss per step, train W={WORKERS}: 1: " in table and "targets:" in table


def test_bad_arguments_are_one_line_errors(tmp_path):
    for args, message in ((["--workers", "1"], "must be >= 2"),
                          (["--comm", "mpi", "--launcher", "horovodrun"], "--comm mpi needs --launcher mpirun"),
                          (["--classes", "100", "--workers", "8"], "too small"),
                          (["--batch", "1"], "--batch >= 2")):
        p = _bench(tmp_path, *args, timeout=120)
        assert p.returncode == 1 and p.stdout == "", (args, p.stderr)
        assert p.stderr.strip().count("\n") == 0 and message in p.stderr, (args, p.stderr)


def test_a_large_launch_on_one_box_is_pinned_and_has_its_limits():
    mpi = scale.launcher_command("mpirun", 64, 600)
    assert mpi[1:3] == ["-np", "64"] and "--oversubscribe" in mpi and mpi[mpi.index("--bind-to") + 1] == "none"
    assert ("--allow-run-as-root" in mpi) == (os.geteuid() == 0)
    text = " ".join(mpi)
    assert "btl_tcp_if_include lo" in text and "oob_tcp_if_include lo" in text and "mpi_yield_when_idle 1" in text
    hvd = " ".join(scale.launcher_command("horovodrun", 64, 600))
    assert "-np 64 -H localhost:64 --gloo" in hvd and "--start-timeout 600" in hvd
    assert "--gloo-timeout-seconds 600" in hvd and "--network-interfaces lo" in hvd
    limits = scale.raise_open_files_limit()
    assert limits["soft"] == limits["hard"] == resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def test_resharded_rows_are_read_without_mapping_the_old_shards(tmp_path):
    # bench scale found it: a rank resuming at W / 2 kept each old shard it read mapped while copying, and the
    # mapped pages counted in its peak RSS on top of its new bank. The rows come through plain reads now.
    import numpy as np

    from partial_fc import checkpoint
    from partial_fc.head.precision import from_float32

    rng = np.random.default_rng(0)
    full = rng.standard_normal((10, 3)).astype(np.float32)
    shards, start = [], 0
    os.makedirs(tmp_path / "model-0001.centers")
    for k, count in enumerate((4, 3, 3)):
        for key, rows in (("weight", full[start:start + count]), ("momentum", -full[start:start + count])):
            np.save(tmp_path / f"model-0001.centers/rank{k}.{key}.npy", rows)
        shards.append({"rank": k, "start": start, "count": count, "weight": f"model-0001.centers/rank{k}.weight.npy",
                       "momentum": f"model-0001.centers/rank{k}.momentum.npy"})
        start += count
    meta = {"embedding_size": 3, "num_classes": 10, "world_size": 3, "shards": shards}
    ckpt = checkpoint.Checkpoint(str(tmp_path / "model-0001.json"), meta)
    for lo, count in ((0, 5), (5, 5), (2, 7)):  # ranges across shard boundaries, as at another world size
        w, m = ckpt.centers(lo, count)
        assert np.array_equal(w, full[lo:lo + count]) and np.array_equal(m, -full[lo:lo + count])
        assert type(w) is np.ndarray and w.base is None  # its own memory, not a view of a mapped file
        w16, _ = ckpt.centers(lo, count, "float16")  # converted on the way, in row chunks
        assert np.array_equal(w16, from_float32(full[lo:lo + count], "float16"))
    with open("/proc/self/maps") as f:
        assert "model-0001.centers" not in f.read()
    np.save(tmp_path / "model-0001.centers/rank1.weight.npy", full[4:7])
    with open(tmp_path / "model-0001.centers/rank1.weight.npy", "r+b") as f:  # cut inside its last row
        f.truncate(os.path.getsize(f.name) - 4)
    try:
        ckpt.centers(0, 10)
    except checkpoint.CheckpointError as e:
        assert "rank1.weight.npy" in str(e)
    else:
        raise AssertionError("a truncated shard was read")
