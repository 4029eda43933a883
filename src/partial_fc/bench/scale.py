"""`partial-fc bench scale`: 100 M classes on 64 workers, simulated on one machine.

    partial-fc bench scale                        (C = 1e8, W = 64, then resumed at W = 32: a quiet machine)
    partial-fc bench scale --classes 1e6 --workers 3 --resume-workers 2 --steps 3     (a check in a few minutes)

The software limits of scale (start-up, W-way collectives, the sharding of 1e8 ids, checkpoints of W shards,
re-sharding on resume) do not need W GPUs: this launches W trainer processes here, each one rank of
`partial-fc train` on synthetic images of recurring identities (PFC_SYNTHETIC_IDENTITIES), with a small
embedding (--dim), a compact host bank (float16, PFC_MEMORY_BANK=host), a tiny batch and the `tiny` network
(symbols/tiny.py), so that W processes fit one box. In order:

    baseline W    the same launch with C = 16 x W classes (a head of almost nothing): each rank's peak RSS is
                  what the process holds besides the head (MXNet, Horovod / MPI at this W, the backbone, data)
    train W       C classes for --steps steps, a checkpoint at the end (PFC_CHECKPOINT_STEPS = --steps)
    load          this process reads the checkpoint back as the resumed ranks will, timed: every new rank's
                  class range from whichever old shards hold it (checkpoint.Checkpoint.centers) and the backbone
    baseline W2   as baseline W, at --resume-workers
    resume W2     PFC_RESUME=1 at --resume-workers ranks (the centers re-sharded), --resume-steps more steps,
                  then its own checkpoint (of W2 shards; the W one is pruned, PFC_KEEP_CHECKPOINTS=1)

Every rank runs under the peak-RSS wrapper (bench/peak_rss.py). The table and its targets (PASS/FAIL, never
asserted): docs/performance.md, "Scale"; its plan column is head/memory_plan.py's, for the same settings.

What 64 ranks on one box need (launcher_command, raise_open_files_limit): mpirun --oversubscribe --bind-to
none, TCP pinned to loopback and yield when idle (spinning waits would starve 2 cores), or horovodrun --gloo
with its timeouts raised and lo pinned; the open-files limit raised to the hard one; the trainer's watchdog
limits raised. W x (~0.2 GiB + the plan) must fit MemAvailable and twice the bank the work folder's disk.
"""
from __future__ import annotations

import collections
import json
import math
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from .. import checkpoint
from ..args import positive_int, rate
from ..head.memory_plan import bank_bytes, memory_plan
from ..head.sharding import shard_range
from . import common, peak_rss

DEFAULT_CLASSES, DEFAULT_WORKERS, DEFAULT_RESUME_WORKERS = 100_000_000, 64, 32
# D = 8, float16 centers + momentum: 1.5625 M rows x 8 x 2 arrays x 2 B = 50 MB per rank at W = 64.
DEFAULT_DIM, DEFAULT_BANK_DTYPE = 8, "float16"
# Two images per rank: the other networks' embedding BatchNorm needs more than one row (tiny has none). N x S
# = B x r x C whatever W: at r = 0.01 each of the two [N, S] float32 arrays is 8 MB at 1e8 classes (at r = 0.1,
# 80 MB per rank, 10 GB over 64 ranks). Enough steps for the loss to show its trend (a step is seconds).
DEFAULT_BATCH, DEFAULT_RATE = 2, 0.01
DEFAULT_STEPS, DEFAULT_RESUME_STEPS = 8, 4
DEFAULT_IDENTITIES, DEFAULT_NETWORK = 16, "tiny"
# The learning rates the steps run at, after the trainer's linear scaling with the global batch (the
# benchmark passes PFC_LR = lr x 512 / (B x W), so both world sizes step alike).
DEFAULT_LR, DEFAULT_BANK_LR = 0.0005, 0.5
DEFAULT_TIMEOUT = 3600.0              # seconds per launch (start-up, collectives, the launcher's own limits)
BASELINE_CLASSES_PER_RANK = 16
PROCESS_ESTIMATE = int(0.2 * common.GIB)   # one tiny trainer process besides its head (RssAnon + shared, ~0.18)
PLAN_TOLERANCE = 0.10
LAUNCHERS, COMMS = ("mpirun", "horovodrun"), ("horovod", "mpi")
STEP_LINE = re.compile(r"step\s+(\d+)/(\d+)\s+loss")


def raise_open_files_limit() -> dict:
    """The soft limit of open files raised to the hard one (children inherit it); returns both, as now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return {"soft": soft, "hard": hard}


def launcher_command(launcher: str, workers: int, timeout: float) -> list[str]:
    """The launch of `workers` local processes, with what a large world on one box needs."""
    if launcher == "mpirun":
        cmd = [common.executable("mpirun"), "-np", str(workers), "--oversubscribe", "--bind-to", "none",
               "-mca", "btl_tcp_if_include", "lo", "-mca", "oob_tcp_if_include", "lo",
               "-mca", "mpi_yield_when_idle", "1"]
        if os.geteuid() == 0:
            cmd.append("--allow-run-as-root")
        return cmd
    if launcher == "horovodrun":
        seconds = str(int(math.ceil(timeout)))
        return [*common.horovodrun_local(workers), "--start-timeout", seconds, "--gloo-timeout-seconds", seconds,
                "--network-interfaces", "lo"]
    raise common.BenchError(f"unknown launcher {launcher!r} (known: {', '.join(LAUNCHERS)})")


def _settings(classes, steps, *, workers, dim, batch, rate_, bank_dtype, identities, network, comm, lr, bank_lr,
              output, resume, save, timeout) -> dict:
    """The PFC_* settings of one launch; every one the trainer reads is pinned."""
    per_512 = 512.0 / (batch * workers)  # the trainer scales PFC_LR by (B x W) / 512
    return {
        "PFC_DATA_DIR": "", "PFC_DATASET": "synthetic", "PFC_NUM_CLASSES": str(classes), "PFC_OUTPUT": output,
        "PFC_RESUME": "1" if resume else "", "PFC_NETWORK": network, "PFC_EMBEDDING_SIZE": str(dim),
        "PFC_BATCH_SIZE": str(batch), "PFC_SAMPLE_RATE": repr(float(rate_)), "PFC_MEMORY_BANK": "host",
        "PFC_BANK_DTYPE": bank_dtype, "PFC_SYNTHETIC_IDENTITIES": str(identities), "PFC_LOSS": "arcface",
        "PFC_LR": repr(lr * per_512), "PFC_MEMORY_BANK_LR": repr(bank_lr * per_512), "PFC_LR_STEPS": "",
        "PFC_WARMUP_STEPS": "0", "PFC_MAX_STEPS": str(steps), "PFC_FREQUENT": "1", "PFC_VERBOSE": str(10 ** 9),
        "PFC_SAVE_CHECKPOINTS": "1" if save else "0", "PFC_CHECKPOINT_STEPS": str(steps),
        "PFC_KEEP_CHECKPOINTS": "1", "PFC_TENSORBOARD": "0", "PFC_PROFILE": "0", "PFC_SEED": "0", "PFC_FP16": "0",
        "PFC_DROPOUT": "0", "PFC_COMM": comm, "PFC_DATA_THREADS": "1",
        "PFC_SLOW_TIMEOUT": repr(float(timeout)), "PFC_COLLECTIVE_TIMEOUT": repr(float(min(timeout, 900.0))),
    }


def _launch(label: str, launcher: list[str], workers: int, settings: dict, work: str, timeout: float, log) -> dict:
    """Run one launch of the trainer to its end; return its exit status, timings, metrics and per-rank peaks."""
    output = settings["PFC_OUTPUT"]
    name = re.sub(r"[^\w.=-]+", "_", label)
    rss_dir = os.path.join(work, f"{name}.rss")
    os.makedirs(rss_dir, exist_ok=True)
    threads = {"OMP_NUM_THREADS": "1", "MXNET_CPU_WORKER_NTHREADS": "1"}
    cmd = [*launcher, "env", *(f"{k}={v}" for k, v in {**threads, **settings}.items()), sys.executable, "-m",
           "partial_fc.bench.peak_rss", rss_dir, common.executable("partial-fc"), "train"]
    print(f"bench scale: {label}: {workers} ranks, C={int(settings['PFC_NUM_CLASSES']):,}, "
          f"steps to {settings['PFC_MAX_STEPS']} ...", file=log, flush=True)
    tail, marks = collections.deque(maxlen=60), {}
    started_wall, t0 = time.time(), time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            text=True, errors="replace", start_new_session=True)

    def pump():
        with open(os.path.join(work, f"{name}.log"), "w") as transcript:
            for line in proc.stdout:
                transcript.write(line)
                text = line.rstrip()
                tail.append(text)
                now = time.monotonic() - t0
                if "Partial FC training:" in text:
                    marks.setdefault("banner_s", now)
                if STEP_LINE.search(text):
                    marks.setdefault("first_step_line_s", now)
                    print(f"bench scale: {label}: {text.split('>:', 1)[-1].strip()[:110]}", file=log, flush=True)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        rc = None
    finally:
        if proc.poll() is None:  # only this launch's own process group (it was started in a new session)
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        reader.join(timeout=30)
    wall = time.monotonic() - t0
    records = _metrics(os.path.join(output, "metrics.jsonl"))
    # A resumed run appends to the metrics of the run it continues: only this launch's lines count.
    steps = [r for r in records if "loss" in r and "samples_per_s" in r and r.get("time", 0) >= started_wall]
    try:
        peaks = peak_rss.read(rss_dir, workers)
    except (OSError, ValueError, KeyError):
        peaks = None
    step_times = [b["time"] - a["time"] for a, b in zip(steps, steps[1:])]
    return {
        "label": label, "workers": workers, "classes": int(settings["PFC_NUM_CLASSES"]),
        "exit_status": rc, "timed_out": rc is None, "wall_s": wall,
        "setup_s": marks.get("banner_s"),
        "to_first_step_s": (steps[0]["time"] - started_wall) if steps else None,
        "step_s": statistics.median(step_times) if step_times else None, "step_times_s": step_times,
        "steps": [int(r["step"]) for r in steps], "losses": [float(r["loss"]) for r in steps],
        "last_step_time": steps[-1]["time"] if steps else None,
        "peak_rss_bytes": peaks, "error": None if rc == 0 else _last_error(tail),
    }


def _metrics(path: str) -> list[dict]:
    try:
        with open(path) as f:
            return [json.loads(x) for x in f if x.strip()]
    except (OSError, ValueError):
        return []


def _last_error(lines) -> str:
    lines = [x for x in lines if x.strip()]
    for x in reversed(lines):
        if "error" in x.lower():
            return x.strip()[:400]
    return lines[-1].strip()[:400] if lines else "no output"


def checkpoint_stats(output: str, last_step_time: float | None) -> dict | None:
    """The newest checkpoint in `output`: its files' bytes, the manifest's, and the save time (manifest
    written, the save's last act, minus the last step's metrics line)."""
    path = checkpoint.latest(output)
    if path is None:
        return None
    ckpt = checkpoint.load(path)
    stem = path[:-len(".json")]
    files = [path, os.path.join(output, ckpt.meta["symbol"]), stem + ".params", stem + ".states"]
    shard_dir = stem + ".centers"
    files += [os.path.join(shard_dir, n) for n in sorted(os.listdir(shard_dir))]
    size = sum(os.path.getsize(f) for f in files)
    saved = os.path.getmtime(path)
    return {"path": path, "step": ckpt.step, "world_size": int(ckpt.meta["world_size"]),
            "shards": len(ckpt.meta["shards"]), "bytes": size, "manifest_bytes": os.path.getsize(path),
            "files": len(files), "save_s": None if last_step_time is None else max(0.0, saved - last_step_time)}


def time_load(path: str, classes: int, workers: int, dtype: str) -> dict:
    """Read the checkpoint back as `workers` resumed ranks would, one after another in this process: each
    rank's class range from whichever old shards hold it, and the backbone. Checks that the ranges tile."""
    t0 = time.perf_counter()
    ckpt = checkpoint.load(path)
    ckpt.backbone()
    rows, per_rank = 0, []
    for k in range(workers):
        start, count = shard_range(classes, workers, k)
        t = time.perf_counter()
        weight, mom = ckpt.centers(start, count, dtype)
        per_rank.append(time.perf_counter() - t)
        rows += weight.shape[0]
        del weight, mom
    return {"seconds": time.perf_counter() - t0, "rank_s_max": max(per_rank), "rank_s_median": statistics.median(per_rank),
            "rows": rows, "workers": workers}


def _plan(classes, workers, dim, dtype, rate_, batch) -> dict:
    return memory_plan(classes, workers, dim, dtype, rate_, batch)


def _memory_check(classes, workers, resume_workers, dim, dtype, rate_, batch, work) -> None:
    """Stop before launching what cannot fit: W processes in memory, two checkpoints on disk."""
    need = max(w * (PROCESS_ESTIMATE + _plan(classes, w, dim, dtype, rate_, batch)["total_bytes"])
               for w in (workers, resume_workers))
    have = common.available_memory()
    if have is not None and need > have:
        raise common.BenchError(f"needs about {need / common.GIB:.1f} GiB for its ranks ({workers} x (a process "
                                f"~{PROCESS_ESTIMATE / common.GIB:.1f} GiB + the plan)), {have / common.GIB:.1f} "
                                f"GiB available: lower --workers, --classes or --dim")
    disk = 2 * bank_bytes(classes, dim, dtype)
    free = shutil.disk_usage(work).free
    if disk > free:
        raise common.BenchError(f"{work}: needs {disk / 1e9:.1f} GB for two checkpoints, {free / 1e9:.1f} GB free "
                                f"(set TMPDIR to a larger disk)")


def benchmark(classes=DEFAULT_CLASSES, workers=DEFAULT_WORKERS, resume_workers=DEFAULT_RESUME_WORKERS,
              dim=DEFAULT_DIM, steps=DEFAULT_STEPS, resume_steps=DEFAULT_RESUME_STEPS, batch=DEFAULT_BATCH,
              rate_=DEFAULT_RATE, bank_dtype=DEFAULT_BANK_DTYPE, identities=DEFAULT_IDENTITIES,
              network=DEFAULT_NETWORK, launcher="mpirun", comm="horovod", lr=DEFAULT_LR, bank_lr=DEFAULT_BANK_LR,
              baseline=True, timeout=DEFAULT_TIMEOUT, *, as_json=False, out=None, log=None, workdir=None) -> dict:
    """Train at `workers`, checkpoint, resume at `resume_workers`; print the table (or JSON); return the report."""
    import symbols

    out, log = out or sys.stdout, log or sys.stderr
    if min(workers, resume_workers) < 2:
        raise common.BenchError("--workers and --resume-workers must be >= 2 (the runs exercise the collectives)")
    if min(workers, resume_workers) * BASELINE_CLASSES_PER_RANK > classes or classes < identities:
        raise common.BenchError(f"--classes {classes:,} is too small for {max(workers, resume_workers)} ranks and "
                                f"{identities} identities")
    if not 1 <= identities or batch < 2 or min(steps, resume_steps) < 1:
        raise common.BenchError("--identities and --steps / --resume-steps must be >= 1, --batch >= 2 (the "
                                "networks' BatchNorms need two rows)")
    if network not in symbols.NETWORKS:
        raise common.BenchError(f"unknown network {network!r} (known: {', '.join(symbols.NETWORKS)})")
    if comm == "mpi" and launcher != "mpirun":
        raise common.BenchError("--comm mpi needs --launcher mpirun (mpi4py)")
    common.check_bank_dtype(bank_dtype)
    files = raise_open_files_limit()
    work = tempfile.mkdtemp(prefix="pfc-bench-scale-", dir=workdir)
    t_start = time.perf_counter()
    runs, load = [], None
    try:
        _memory_check(classes, workers, resume_workers, dim, bank_dtype, rate_, batch, work)
        output = os.path.join(work, "model")
        common_settings = dict(dim=dim, batch=batch, rate_=rate_, bank_dtype=bank_dtype, identities=identities,
                               network=network, comm=comm, lr=lr, bank_lr=bank_lr, timeout=timeout)

        def launch(label, w, c, total_steps, out_dir, resume, save):
            settings = _settings(c, total_steps, workers=w, output=out_dir, resume=resume, save=save,
                                 **common_settings)
            run = _launch(label, launcher_command(launcher, w, timeout), w, settings, work, timeout, log)
            run.update(kind="baseline" if label.startswith("baseline") else "run", resumed=resume,
                       plan=_plan(c, w, dim, bank_dtype, rate_, batch))
            run["checkpoint"] = checkpoint_stats(out_dir, run["last_step_time"]) if save else None
            runs.append(run)
            return run

        def baseline_run(w):
            if not baseline:
                return None
            return launch(f"baseline W={w}", w, max(identities, BASELINE_CLASSES_PER_RANK * w), steps,
                          os.path.join(work, f"baseline{w}"), False, False)

        base_w = baseline_run(workers)
        train = launch(f"train W={workers}", workers, classes, steps, output, False, True)
        if train["exit_status"] == 0 and train["checkpoint"] is not None:
            print(f"bench scale: reading the checkpoint back as {resume_workers} ranks ...", file=log, flush=True)
            load = time_load(train["checkpoint"]["path"], classes, resume_workers, bank_dtype)
            base_w2 = baseline_run(resume_workers)
            resume = launch(f"resume W={resume_workers}", resume_workers, classes, steps + resume_steps, output,
                            True, True)
        else:
            base_w2 = resume = None
        for run, base in ((train, base_w), (resume, base_w2)):
            if run is not None:
                _compare(run, base)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = {
        "benchmark": "scale",
        "machine": common.machine_info(),
        "config": {"classes": classes, "workers": workers, "resume_workers": resume_workers, "dim": dim,
                   "steps": steps, "resume_steps": resume_steps, "batch": batch, "rate": rate_,
                   "bank_dtype": bank_dtype, "memory_bank": "host", "identities": identities, "network": network,
                   "launcher": launcher, "comm": comm, "lr": lr, "bank_lr": bank_lr, "baseline": baseline,
                   "timeout_s": timeout, "open_files": files, "data": "synthetic images of recurring identities",
                   "launch": " ".join(launcher_command(launcher, workers, timeout))},
        "runs": runs,
        "load": load,
        "wall_s": time.perf_counter() - t_start,
    }
    report["targets"] = targets(report)
    common.emit(report, format_table, as_json, out)
    return report


def _compare(run: dict, base: dict | None) -> None:
    """Each rank's peak against the plan for the same settings plus that rank's baseline peak."""
    plan = run["plan"]["total_bytes"]
    peaks = run["peak_rss_bytes"]
    base_peaks = base["peak_rss_bytes"] if base is not None else None
    if not peaks or not base_peaks or len(base_peaks) != len(peaks):
        run["ratios"] = None
        return
    run["baseline_rss_bytes"] = base_peaks
    run["expected_bytes"] = [plan + b for b in base_peaks]
    run["ratios"] = [p / e for p, e in zip(peaks, run["expected_bytes"])]
    run["net_ratios"] = [(p - b) / plan for p, b in zip(peaks, base_peaks)]
    run["worst_ratio"] = max(run["ratios"], key=lambda x: abs(x - 1.0))


def targets(report: dict) -> list[dict]:
    c = report["config"]
    found = []
    main = [r for r in report["runs"] if r["kind"] == "run"]
    for r in report["runs"]:
        done = r["exit_status"] == 0 and bool(r["steps"])
        found.append({"what": f"{r['label']}: completed", "value": "exit 0" if done else r["error"], "pass": done})
    losses = [x for r in main for x in r["losses"]]
    finite = bool(losses) and all(math.isfinite(x) for x in losses)
    found.append({"what": "every loss finite", "value": f"{len(losses)} steps", "pass": finite})
    if losses:
        found.append({"what": "loss falls on the recurring identities (last step < first)",
                      "value": f"{losses[0]:.3f} -> {losses[-1]:.3f}", "pass": finite and losses[-1] < losses[0]})
    resumed = next((r for r in main if r["resumed"]), None)
    saved = main[0]["checkpoint"] if main else None
    if resumed is not None and saved is not None:
        first = resumed["steps"][0] if resumed["steps"] else None
        ok = (first == saved["step"] + 1 and resumed["workers"] == c["resume_workers"]
              and saved["world_size"] == c["workers"] and resumed["exit_status"] == 0
              and resumed["steps"][-1] == c["steps"] + c["resume_steps"])
        found.append({"what": f"resume at W={c['resume_workers']} continues from the saved step",
                      "value": f"saved step {saved['step']} (W={saved['world_size']}), resumed at step {first}",
                      "pass": ok})
    elif main:
        found.append({"what": f"resume at W={c['resume_workers']} continues from the saved step",
                      "value": "not run", "pass": False})
    for r in main:
        if r.get("ratios"):
            worst = r["worst_ratio"]
            found.append({"what": f"{r['label']}: every rank's peak RSS within {PLAN_TOLERANCE:.0%} of plan + baseline",
                          "value": f"worst peak / (plan + baseline) {worst:.3f}",
                          "pass": all(abs(x - 1.0) <= PLAN_TOLERANCE for x in r["ratios"])})
    return found


def _mib(x) -> str:
    return "n/a" if x is None else f"{x / 2**20:,.0f}"


def _s(x, digits=1) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def format_table(report: dict) -> str:
    c = report["config"]
    lines = [
        f"partial-fc bench scale: C={c['classes']:,}, W={c['workers']} then resumed at W={c['resume_workers']}; "
        f"{c['network']} D={c['dim']}, batch {c['batch']}/rank, r={c['rate']:g}, {c['bank_dtype']} {c['memory_bank']} "
        f"bank, {c['identities']} recurring identities, {c['steps']} + {c['resume_steps']} steps, "
        f"PFC_COMM={c['comm']}",
        *common.machine_lines(report["machine"]),
        f"launch: {c['launch']} (open files: soft {c['open_files']['soft']}, hard {c['open_files']['hard']})",
        "",
    ]
    rows = []
    for r in report["runs"]:
        p = r["plan"]
        peaks = r["peak_rss_bytes"] or []
        base = r.get("baseline_rss_bytes") or []
        ck = r.get("checkpoint")
        rows.append((
            r["label"], f"{r['classes']:,}", f"{p['n_local']:,}", _s(r["setup_s"]), _s(r["to_first_step_s"]),
            _s(r["step_s"], 2),
            f"{r['losses'][0]:.2f} -> {r['losses'][-1]:.2f}" if r["losses"] else "n/a",
            f"{_mib(min(peaks))}-{_mib(max(peaks))}" if peaks else "n/a",
            _mib(p["total_bytes"]) if r["kind"] == "run" else "-",
            f"{_mib(min(base))}-{_mib(max(base))}" if base else "-",
            f"{r['worst_ratio']:.3f}" if r.get("ratios") else "-",
            f"{ck['bytes'] / 1e6:,.1f} MB / {ck['shards']} shards / {ck['manifest_bytes'] / 1e3:.1f} kB" if ck else "-",
            _s(ck["save_s"]) if ck else "-",
            "" if r["exit_status"] == 0 else f"FAILED: {r['error']}",
        ))
    lines += common.table(("run", "C", "rows/rank", "set-up s", "to step 1 s", "step s", "loss first -> last",
                           "peak RSS MiB", "plan MiB", "baseline MiB", "peak/(plan+base)", "checkpoint (manifest)",
                           "save s", ""), rows)
    load = report["load"]
    if load is not None:
        lines.append(f"load: the W={c['workers']} checkpoint read back as {load['workers']} re-sharded ranks in one "
                     f"process: {load['seconds']:.2f} s ({load['rows']:,} rows; per rank median "
                     f"{load['rank_s_median']:.3f} s, max {load['rank_s_max']:.3f} s)")
    lines.append("")
    for r in report["runs"]:
        if r["kind"] == "run" and r["losses"]:
            lines.append(f"loss per step, {r['label']}: " + ", ".join(
                f"{s}: {x:.3f}" for s, x in zip(r["steps"], r["losses"])))
    for r in report["runs"]:
        if r["kind"] == "run" and r["peak_rss_bytes"]:
            lines.append(f"peak RSS MiB per rank, {r['label']} (plan {_mib(r['plan']['total_bytes'])} MiB + that rank's "
                         f"baseline): " + " ".join(_mib(x) for x in r["peak_rss_bytes"]))
    lines += [
        "",
        "set-up = launch to rank 0's banner (imports, Horovod start-up, bank created or re-sharded from the "
        "checkpoint); to step 1 = launch to the end of the first step; step = median of the later steps; plan = "
        "memory_plan() per rank for the same settings (head/memory_plan.py: bank + the step's working set); baseline = "
        f"the same launch at C = {BASELINE_CLASSES_PER_RANK} x W (the process without a head to speak of); save = "
        "manifest written - last step logged.",
        f"wall time {report['wall_s']:.0f} s",
        "",
        "targets:",
    ]
    lines += [f"  {t['what']}: {t['value']} {'PASS' if t['pass'] else 'FAIL'}" for t in report["targets"]]
    return "\n".join(lines) + "\n"


def _dtype(text: str) -> str:
    if text not in common.BANK_DTYPES:
        import argparse
        raise argparse.ArgumentTypeError(f"unknown bank dtype {text!r} (known: {', '.join(common.BANK_DTYPES)})")
    return text


def add_arguments(parser) -> None:
    # String defaults go through the type like a command-line value, so the help shows them as typed.
    parser.add_argument("--classes", type=positive_int, default="1e8", help="classes C (default: %(default)s)")
    parser.add_argument("--workers", type=positive_int, default=DEFAULT_WORKERS,
                        help="ranks of the first run (default: %(default)s)")
    parser.add_argument("--resume-workers", type=positive_int, default=DEFAULT_RESUME_WORKERS,
                        help="ranks of the resumed run (default: %(default)s)")
    parser.add_argument("--dim", type=positive_int, default=DEFAULT_DIM, help="embedding size D (default: %(default)s)")
    parser.add_argument("--steps", type=positive_int, default=DEFAULT_STEPS,
                        help="steps before the checkpoint (default: %(default)s)")
    parser.add_argument("--resume-steps", type=positive_int, default=DEFAULT_RESUME_STEPS,
                        help="steps after the resume (default: %(default)s)")
    parser.add_argument("--batch", type=positive_int, default=DEFAULT_BATCH, help="images per rank (default: %(default)s)")
    parser.add_argument("--rate", type=rate, default=DEFAULT_RATE, help="sample rate r (default: %(default)s)")
    parser.add_argument("--bank-dtype", type=_dtype, default=DEFAULT_BANK_DTYPE,
                        help="storage of centers and momentum, in host memory (default: %(default)s)")
    parser.add_argument("--identities", type=positive_int, default=DEFAULT_IDENTITIES,
                        help="recurring synthetic identities (default: %(default)s)")
    parser.add_argument("--network", default=DEFAULT_NETWORK, help="backbone (default: %(default)s)")
    parser.add_argument("--launcher", choices=LAUNCHERS, default="mpirun", help="(default: %(default)s)")
    parser.add_argument("--comm", choices=COMMS, default="horovod",
                        help="PFC_COMM of the ranks (mpi: mpi4py, with mpirun only; default: %(default)s)")
    parser.add_argument("--lr", type=float, default=DEFAULT_LR,
                        help="backbone learning rate as applied, after the trainer's scaling (default: %(default)s)")
    parser.add_argument("--bank-lr", type=float, default=DEFAULT_BANK_LR,
                        help="centers' learning rate as applied (default: %(default)s)")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the baseline launches (no peak / (plan + baseline) then)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help="seconds each launch may take, and the launcher's start-up limits (default: %(default)s)")


def run(args) -> int:
    if args.lr < 0 or args.bank_lr < 0 or args.timeout <= 0:
        raise common.BenchError("--lr and --bank-lr must be >= 0, --timeout > 0")
    report = benchmark(args.classes, args.workers, args.resume_workers, args.dim, args.steps, args.resume_steps,
                       args.batch, args.rate, args.bank_dtype, args.identities, args.network, args.launcher, args.comm,
                       args.lr, args.bank_lr, not args.no_baseline, args.timeout, as_json=args.json)
    return 0 if all(t["pass"] for t in report["targets"] if t["what"].endswith("completed")) else 1
