"""`partial-fc bench soak`: long runs that must not stall, leak or leave checkpoints behind.

    partial-fc bench soak                                      (100,000 head steps, then 30 minutes of trainer)
    partial-fc bench soak --head-steps 2000 --trainer-seconds 60      (the short version the tests run)

Two parts, each launched here under `horovodrun -np W -H localhost:W --gloo` (W = --workers, default 2):

head     the Partial FC operator alone for --head-steps steps on synthetic embeddings (features and labels a
         function of (seed, rank, step)), with the trainer's per-step collectives under their own names in the
         trainer's order (pfc.stop_requested, then the head's pfc.features, pfc.labels, pfc.logits_max,
         pfc.sum_exp_target, pfc.feature_grad, then pfc.grad_overflow) and every step inside the trainer's
         Watchdog (PFC_COLLECTIVE_TIMEOUT's default limit). Each rank records its step time (median of the
         last 200 steps), resident memory, C heap in use and open file descriptors after the warm-up, at the
         middle and at the end.
trainer  `partial-fc train` itself (mbf, a small batch, synthetic images of recurring identities, a checkpoint
         every --checkpoint-steps steps keeping --keep) for --trainer-seconds, then stopped with SIGTERM to
         horovodrun, as a cluster preempts a job (training/preemption.py). This process samples each rank's
         resident memory and open descriptors from /proc after the warm-up, at the middle and at the end,
         and the step time from metrics.jsonl; afterwards it counts the checkpoints on disk.

A stall is a watchdog trip (the job then ends with status 3) or a stall warning of Horovod's own (a
collective some rank has waited 60 s for). Targets, printed PASS/FAIL and never asserted: no stall; each
rank's resident memory at the end within max(RSS_BOUND_MB, RSS_BOUND_FRACTION of it) of its value after
the warm-up; the head's C heap in use at the end within HEAP_BOUND_MB + HEAP_BOUND_PER_STEP bytes per step
of its value after the warm-up; no more open descriptors at the end than after the warm-up; exactly --keep
checkpoints on disk, and nothing else of a checkpoint (no temporary file, no piece of a pruned one).

Why the heap as well as RSS: glibc serves small allocations from free space it already holds, so a leak of
~100 bytes a step (MXNet's list of a library operator's mutable inputs, never freed; docs/design.md §2) moved
the RSS by only 11 MB in 100,000 steps, inside the RSS bound, while the heap in use grew from the first steps;
the heap also found Horovod 0.28.1's Gloo coordinator leaking ~40 bytes a step on rank 0 alone (patched by
scripts/install.sh, docs/performance.md "bench soak").
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from .. import checkpoint
from ..args import positive_int
from . import common

DEFAULT_HEAD_STEPS, DEFAULT_TRAINER_SECONDS = 100_000, 1800
DEFAULT_WORKERS = 2
HEAD_CLASSES, HEAD_BATCH, HEAD_DIM, HEAD_RATE = 10_000, 64, 128, 0.1
TRAINER_NETWORK, TRAINER_BATCH, TRAINER_DIM, TRAINER_CLASSES, TRAINER_IDENTITIES = "mbf", 8, 128, 1000, 100
DEFAULT_CHECKPOINT_STEPS, DEFAULT_KEEP = 200, 3
WINDOW = 200                          # head steps per step-time median
RSS_BOUND_MB, RSS_BOUND_FRACTION = 20.0, 0.05
# The head's heap after warm-up: a step's own allocations come and go, so its level moves only by what happens
# to be live when it is read (Horovod's and MXNet's buffers in flight: a few hundred KB either way, measured);
# a leak adds its bytes at every step (the one above: ~100).
HEAP_BOUND_MB, HEAP_BOUND_PER_STEP = 1.0, 8.0
HOROVOD_STALL = re.compile(r"stalled|waiting for remainder of ranks", re.IGNORECASE)
WATCHDOG_TRIP = "did not finish within"
STOP_LINE = re.compile(r"stopped by (\w+) after step (\d+): (.*)")


# --- the head part: one process per rank ---------------------------------------------------------------------

def head_worker(steps: int, out_dir: str, *, classes=HEAD_CLASSES, batch=HEAD_BATCH, dim=HEAD_DIM, rate=HEAD_RATE,
                seed=0) -> None:
    """Run on every rank under horovodrun: the head's steps, writing this rank's samples to out_dir."""
    import mxnet as mx
    import numpy as np

    from .. import config, dist
    from ..head.margin import Margin
    from ..head.operator import PartialFC
    from ..training.watchdog import Watchdog

    cfg = config.Config()  # the trainer's default limits
    comm = dist.init("horovod")
    watchdog = Watchdog(comm, cfg.collective_timeout)
    fc = PartialFC(comm, classes, dim, Margin(64.0, 1.0, 0.5, 0.0), rate, seed=seed)
    marks = _marks(steps)
    recent = collections.deque(maxlen=WINDOW)
    samples, longest = [], 0.0
    try:
        for step in range(steps):
            rng = np.random.default_rng([seed, comm.rank, step])
            features = mx.nd.array(rng.standard_normal((batch, dim), dtype=np.float32))
            labels = rng.integers(0, classes, size=batch, dtype=np.int64)
            t0 = time.perf_counter()
            with watchdog.watch(f"head step {step}", cfg.slow_timeout if step == 0 else None,
                                "PFC_SLOW_TIMEOUT" if step == 0 else None):
                dist.max_over_ranks(comm, 0.0, "pfc.stop_requested")
                out = fc.forward_backward(features, labels, step)
                grad = out.feature_grad.asnumpy()  # the backbone's input; the trainer waits for it too
                dist.max_over_ranks(comm, 0.0 if np.isfinite(grad).all() else 1.0, "pfc.grad_overflow")
                fc.update(out, 0.01)
                mx.nd.waitall()
            seconds = time.perf_counter() - t0
            recent.append(seconds)
            longest = max(longest, seconds)
            if step + 1 in marks:
                heap = common.heap_in_use()
                samples.append({"step": step + 1, "at": marks[step + 1], "step_ms": 1e3 * statistics.median(recent),
                                "heap_mb": None if heap is None else heap / 2 ** 20, **process_usage(os.getpid())})
    finally:
        watchdog.close()
    report = {"rank": comm.rank, "steps": steps, "samples": samples, "longest_step_ms": 1e3 * longest}
    with open(os.path.join(out_dir, f"head-rank{comm.rank}.json"), "w") as f:
        json.dump(report, f)


def _marks(steps: int) -> dict:
    """{step: label} of the three samples: after the warm-up (a tenth of the run, at most 1000 steps), the
    middle and the end."""
    warm = max(1, min(1000, steps // 10))
    return {warm: "after warm-up", max(warm, steps // 2): "middle", steps: "end"}


def process_usage(pid: int) -> dict:
    """Resident memory (MB) and open file descriptors of process `pid`, from /proc."""
    rss = None
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
    return {"rss_mb": rss, "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def run_head(steps: int, workers: int, work: str, log) -> dict:
    out_dir = os.path.join(work, "head")
    os.makedirs(out_dir)
    cmd = [*common.horovodrun_local(workers), "env", *(f"{k}={v}" for k, v in _threads(workers).items()),
           common.executable("partial-fc"), "bench", "soak", "--head-worker", out_dir, "--head-steps", str(steps)]
    print(f"bench soak: head, {steps} steps on {workers} ranks ...", file=log, flush=True)
    t0 = time.perf_counter()
    rc, lines = _stream(cmd)
    ranks = []
    for k in range(workers):
        path = os.path.join(out_dir, f"head-rank{k}.json")
        if os.path.exists(path):
            with open(path) as f:
                ranks.append(json.load(f))
    stalls = _stalls(lines)
    done = min((r["steps"] for r in ranks), default=0) if len(ranks) == workers and rc == 0 else 0
    return {"steps_requested": steps, "steps_done": done, "exit_status": rc, "stalls": stalls,
            "wall_s": time.perf_counter() - t0, "ranks": ranks,
            "config": {"classes": HEAD_CLASSES, "batch_per_rank": HEAD_BATCH, "dim": HEAD_DIM, "rate": HEAD_RATE},
            "error": None if rc == 0 else _last_error(lines)}


# --- the trainer part ---------------------------------------------------------------------------------------

def run_trainer(seconds: float, workers: int, checkpoint_steps: int, keep: int, work: str, log) -> dict:
    output = os.path.join(work, "model")
    settings = {
        "PFC_DATA_DIR": "", "PFC_OUTPUT": output, "PFC_RESUME": "", "PFC_NETWORK": TRAINER_NETWORK,
        "PFC_NUM_CLASSES": str(TRAINER_CLASSES), "PFC_SYNTHETIC_IDENTITIES": str(TRAINER_IDENTITIES),
        "PFC_EMBEDDING_SIZE": str(TRAINER_DIM), "PFC_BATCH_SIZE": str(TRAINER_BATCH), "PFC_SAMPLE_RATE": "0.1",
        "PFC_MAX_STEPS": str(10 ** 9), "PFC_LR_STEPS": "", "PFC_CHECKPOINT_STEPS": str(checkpoint_steps),
        "PFC_KEEP_CHECKPOINTS": str(keep), "PFC_VERBOSE": str(10 ** 9), "PFC_FREQUENT": "10",
        "PFC_TENSORBOARD": "0", "PFC_SAVE_CHECKPOINTS": "1", "PFC_COMM": "horovod", "PFC_PROFILE": "0",
    }
    worker_env = {**_threads(workers), **settings}
    cmd = [*common.horovodrun_local(workers), "env", *(f"{k}={v}" for k, v in worker_env.items()),
           common.executable("partial-fc"), "train"]
    print(f"bench soak: trainer for {seconds:g} s on {workers} ranks ...", file=log, flush=True)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            text=True, errors="replace", start_new_session=True)
    lines = collections.deque(maxlen=400)
    stalls_seen = []

    def pump():
        for line in proc.stdout:
            lines.append(line.rstrip())
            if HOROVOD_STALL.search(line) or WATCHDOG_TRIP in line:
                stalls_seen.append(line.rstrip())

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    samples, pids, t0 = [], {}, time.monotonic()
    warm = min(120.0, seconds / 10)
    marks = [(warm, "after warm-up"), (max(warm, seconds / 2), "middle"), (seconds, "end")]
    try:
        for at, label in marks:
            while time.monotonic() - t0 < at and proc.poll() is None:
                time.sleep(0.5)
            if proc.poll() is not None:
                break
            pids = pids or _rank_pids(output, workers)
            step, step_ms = _last_step(output, TRAINER_BATCH * workers)
            for k, pid in sorted(pids.items()):
                try:
                    usage = process_usage(pid)
                except OSError:
                    continue
                samples.append({"rank": k, "at": label, "seconds": round(time.monotonic() - t0, 1), "step": step,
                                "step_ms": step_ms, **usage})
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # as a cluster preempts the job: the ranks save and stop
        rc = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        reader.join(timeout=10)
    stopped = [m for m in map(STOP_LINE.search, lines) if m]
    on_disk = checkpoints_on_disk(output)
    steps_done = int(stopped[-1].group(2)) if stopped else _last_step(output, 1)[0]
    shutil.rmtree(output, ignore_errors=True)
    return {"seconds": seconds, "steps_done": steps_done, "exit_status": rc, "stalls": len(stalls_seen),
            "stall_lines": stalls_seen[:5], "stop_line": stopped[-1].group(0) if stopped else None,
            "samples": samples, "checkpoints": on_disk, "keep": keep,
            "config": {"network": TRAINER_NETWORK, "batch_per_rank": TRAINER_BATCH, "dim": TRAINER_DIM,
                       "classes": TRAINER_CLASSES, "identities": TRAINER_IDENTITIES, "rate": 0.1,
                       "checkpoint_steps": checkpoint_steps, "keep": keep, "data": "synthetic images"},
            "error": None if stopped else _last_error(list(lines))}


def checkpoints_on_disk(output: str) -> dict:
    """The complete checkpoints in `output` and any file of a checkpoint that belongs to none of them."""
    steps = checkpoint._steps(output) if os.path.isdir(output) else []
    expected = {f"{checkpoint.PREFIX}-symbol.json"}
    for step in steps:
        stem = f"{checkpoint.PREFIX}-{step:04d}"
        expected |= {f"{stem}.json", f"{stem}.params", f"{stem}.states", f"{stem}.centers"}
    stray = sorted(n for n in (os.listdir(output) if os.path.isdir(output) else [])
                   if (n.startswith(checkpoint.PREFIX + "-") or ".tmp-" in n) and n not in expected)
    return {"count": len(steps), "steps": steps, "stray": stray}


def _rank_pids(output: str, workers: int) -> dict:
    """{rank: pid} of the trainer processes whose PFC_OUTPUT is `output` (from /proc)."""
    found = {}
    for pid, env, cmd in common.processes_with_env(f"PFC_OUTPUT={output}".encode()):
        if cmd[-2:] == [b"train", b""] and b"env" not in os.path.basename(cmd[0]):
            for item in env:
                if item.startswith(b"HOROVOD_RANK="):
                    found[int(item.split(b"=", 1)[1])] = pid
    return found if len(found) == workers else {}


def _last_step(output: str, global_batch: int) -> tuple[int, float | None]:
    """(last step logged, ms per step of its report window) from metrics.jsonl."""
    try:
        with open(os.path.join(output, "metrics.jsonl")) as f:
            rows = [json.loads(x) for x in f if x.strip()]
    except (OSError, ValueError):
        return 0, None
    rows = [r for r in rows if "samples_per_s" in r]
    if not rows:
        return 0, None
    return int(rows[-1]["step"]), 1e3 * global_batch / rows[-1]["samples_per_s"]


# --- both ---------------------------------------------------------------------------------------------------

def benchmark(head_steps=DEFAULT_HEAD_STEPS, trainer_seconds=DEFAULT_TRAINER_SECONDS, workers=DEFAULT_WORKERS,
              checkpoint_steps=DEFAULT_CHECKPOINT_STEPS, keep=DEFAULT_KEEP, *, as_json=False, out=None, log=None,
              workdir=None) -> dict:
    """Run the parts asked for (a zero step count or time skips one); print the table or JSON; return it."""
    out, log = out or sys.stdout, log or sys.stderr
    if workers < 2:
        raise common.BenchError("the soak runs the ranks' collectives: --workers must be >= 2")
    work = tempfile.mkdtemp(prefix="pfc-bench-soak-", dir=workdir)
    try:
        head = run_head(head_steps, workers, work, log) if head_steps else None
        trainer = run_trainer(trainer_seconds, workers, checkpoint_steps, keep, work, log) if trainer_seconds else None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = {"benchmark": "soak", "machine": common.machine_info(), "workers": workers,
              "launcher": " ".join(common.horovodrun_local(workers)), "worker_threads": _threads(workers), "head": head,
              "trainer": trainer,
              "targets": targets(head, trainer)}
    common.emit(report, format_table, as_json, out)
    return report


def rss_bound_mb(start_mb: float) -> float:
    return max(RSS_BOUND_MB, RSS_BOUND_FRACTION * start_mb)


def heap_bound_mb(steps: int) -> float:
    return HEAP_BOUND_MB + HEAP_BOUND_PER_STEP * steps / 2 ** 20


def targets(head, trainer) -> list[dict]:
    found = []
    for part, per_rank in (("head", _head_samples(head)), ("trainer", _trainer_samples(trainer))):
        if per_rank is None:
            continue
        report = head if part == "head" else trainer
        # The head's job ends by itself (status 0, every step done); the trainer's by its SIGTERM.
        ok = report["stalls"] == 0 and (part == "trainer" or (report["exit_status"] == 0
                                                               and report["steps_done"] == report["steps_requested"]))
        found.append({"part": part, "what": "no stall", "value": report["stalls"], "pass": ok})
        for rank, rows in sorted(per_rank.items()):
            if len(rows) < 2:
                continue
            first, last = rows[0], rows[-1]
            growth = last["rss_mb"] - first["rss_mb"]
            found.append({"part": part, "what": f"rank {rank} RSS growth after warm-up (MB)", "value": round(growth, 1),
                          "bound": round(rss_bound_mb(first["rss_mb"]), 1),
                          "pass": growth <= rss_bound_mb(first["rss_mb"])})
            if first.get("heap_mb") is not None:
                grown, bound = last["heap_mb"] - first["heap_mb"], heap_bound_mb(last["step"] - first["step"])
                found.append({"part": part, "what": f"rank {rank} C heap growth after warm-up (MB)",
                              "value": round(grown, 2), "bound": round(bound, 2), "pass": grown <= bound})
            found.append({"part": part, "what": f"rank {rank} open fds after warm-up -> end",
                          "value": f"{first['fds']} -> {last['fds']}", "pass": last["fds"] <= first["fds"]})
    if trainer is not None:
        ck = trainer["checkpoints"]
        found.append({"part": "trainer", "what": "checkpoints on disk (= keep), no stray file",
                      "value": f"{ck['count']} (steps {', '.join(map(str, ck['steps'])) or 'none'})"
                               + (f", stray: {', '.join(ck['stray'])}" if ck["stray"] else ""),
                      "pass": ck["count"] == trainer["keep"] and not ck["stray"]})
        found.append({"part": "trainer", "what": "stopped by SIGTERM with a checkpoint",
                      "value": trainer["stop_line"] or trainer["error"],
                      "pass": bool(trainer["stop_line"]) and "saved" in trainer["stop_line"]})
    return found


def _head_samples(head):
    if head is None:
        return None
    return {r["rank"]: r["samples"] for r in head["ranks"]}


def _trainer_samples(trainer):
    if trainer is None:
        return None
    per_rank = {}
    for s in trainer["samples"]:
        per_rank.setdefault(s["rank"], []).append(s)
    return per_rank


def format_table(report: dict) -> str:
    lines = common.machine_lines(report["machine"])
    head, trainer = report["head"], report["trainer"]
    if head is not None:
        c = head["config"]
        lines += ["", f"head ({report['launcher']}; C={c['classes']:,}, B={c['batch_per_rank']}/rank, D={c['dim']}, "
                      f"r={c['rate']}): {head['steps_done']:,} of {head['steps_requested']:,} steps in "
                      f"{head['wall_s']:.0f} s, stalls {head['stalls']}"
                  + (f"; failed: {head['error']}" if head["error"] else "")]
        rows = [(str(r["rank"]), f"{s['step']:,}", f"{s['step_ms']:.2f}", f"{s['rss_mb']:.1f}",
                 "n/a" if s.get("heap_mb") is None else f"{s['heap_mb']:.2f}", str(s["fds"]), s["at"])
                for r in head["ranks"] for s in r["samples"]]
        lines += common.table(("rank", "step", "step ms", "RSS MB", "heap MB", "fds", "when"), rows) if rows else []
        lines += ["longest step: " + ", ".join(f"rank {r['rank']} {r['longest_step_ms']:.1f} ms"
                                                for r in head["ranks"])]
    if trainer is not None:
        c = trainer["config"]
        lines += ["", f"trainer ({report['launcher']}; {c['network']}, B={c['batch_per_rank']}/rank, D={c['dim']}, "
                      f"{c['data']}, checkpoint every {c['checkpoint_steps']} steps, keep {c['keep']}): "
                      f"{trainer['steps_done']:,} steps in {trainer['seconds']:g} s, stalls {trainer['stalls']}"]
        rows = [(str(s["rank"]), f"{s['seconds']:.0f}", f"{s['step']:,}",
                 "n/a" if s["step_ms"] is None else f"{s['step_ms']:.1f}", f"{s['rss_mb']:.1f}", str(s["fds"]), s["at"])
                for s in sorted(trainer["samples"], key=lambda s: (s["rank"], s["seconds"]))]
        lines += common.table(("rank", "s", "step", "step ms", "RSS MB", "fds", "when"), rows) if rows else []
        lines += [f"stop: {trainer['stop_line'] or trainer['error']}"]
        lines += [f"  {x}" for x in trainer["stall_lines"]]
    lines += ["", f"targets (RSS bound: max({RSS_BOUND_MB:g} MB, {RSS_BOUND_FRACTION:.0%} of the value after "
                  f"warm-up); heap bound: {HEAP_BOUND_MB:g} MB + {HEAP_BOUND_PER_STEP:g} bytes per step after "
                  f"warm-up):"]
    for t in report["targets"]:
        bound = f" (bound {t['bound']})" if "bound" in t else ""
        lines.append(f"  {t['part']}: {t['what']}: {t['value']}{bound} {'PASS' if t['pass'] else 'FAIL'}")
    return "\n".join(lines) + "\n"


# --- helpers ------------------------------------------------------------------------------------------------

def _threads(workers: int) -> dict:
    """Each rank's thread settings: the cores shared out, one MXNet engine worker (as config.sh sets them)."""
    return {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // workers)), "MXNET_CPU_WORKER_NTHREADS": "1"}


def _stream(cmd) -> tuple[int, list[str]]:
    """(exit status, the last 400 lines of output) of `cmd`."""
    lines = collections.deque(maxlen=400)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            text=True, errors="replace")
    for line in proc.stdout:
        lines.append(line.rstrip())
    return proc.wait(), list(lines)


def _stalls(lines) -> int:
    return sum(1 for x in lines if HOROVOD_STALL.search(x) or WATCHDOG_TRIP in x)


def _last_error(lines) -> str:
    lines = [x for x in lines if x.strip()]
    for x in reversed(lines):
        if "error" in x.lower():
            return x.strip()
    return lines[-1].strip() if lines else "no output"


def add_arguments(parser) -> None:
    parser.add_argument("--head-steps", type=int, default=DEFAULT_HEAD_STEPS,
                        help="head steps under horovodrun; 0 skips the part (default: %(default)s)")
    parser.add_argument("--trainer-seconds", type=float, default=DEFAULT_TRAINER_SECONDS,
                        help="seconds of `partial-fc train` before its SIGTERM; 0 skips the part "
                             "(default: %(default)s)")
    parser.add_argument("--workers", type=positive_int, default=DEFAULT_WORKERS, help="ranks (default: %(default)s)")
    parser.add_argument("--checkpoint-steps", type=positive_int, default=DEFAULT_CHECKPOINT_STEPS,
                        help="the trainer's PFC_CHECKPOINT_STEPS (default: %(default)s)")
    parser.add_argument("--keep", type=positive_int, default=DEFAULT_KEEP,
                        help="the trainer's PFC_KEEP_CHECKPOINTS (default: %(default)s)")
    parser.add_argument("--head-worker", metavar="DIR", help=argparse.SUPPRESS)  # one rank of the head part


def run(args) -> int:
    if args.head_worker:
        head_worker(args.head_steps, args.head_worker)
        return 0
    if args.head_steps < 0 or args.trainer_seconds < 0:
        raise common.BenchError("--head-steps and --trainer-seconds must be >= 0")
    benchmark(args.head_steps, args.trainer_seconds, args.workers, args.checkpoint_steps, args.keep,
              as_json=args.json)
    return 0
