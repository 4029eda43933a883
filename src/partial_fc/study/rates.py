"""`partial-fc study rates`: the same run at several sample rates, side by side (the paper's claim in miniature).

    partial-fc study rates                              (r = 1.0, 0.3, 0.1; 2 workers; each runs `bash config.sh`)
    partial-fc study rates --rates 1.0,0.1 --workers 2 -- partial-fc train
    bash scripts/study_rates.sh                          (the built-in example's data and settings)

Every rate is one training run launched like the example, `horovodrun -np W -H localhost:W --gloo` over the
worker command (by default `bash config.sh` in the current folder, so config.sh and any PFC_* in the
environment choose the data, network, seed and steps). The study changes only PFC_SAMPLE_RATE and gives
each run its own PFC_OUTPUT (OUTPUT/r<rate>) with PFC_RESUME empty, so the runs differ in r alone. The
runs go one after another: each has the machine to itself, and their speeds compare.

From each run's metrics.jsonl and its workers' peak resident memory (bench/peak_rss.py) the study prints one
row per rate: the final loss (the mean over the last report window), the verification accuracy on each .bin
set at the last step, samples/s (the median over the report windows after the first, which pays for start-up),
samples/s relative to the largest rate, the centers one shard keeps per step (positives + drawn negatives,
from the trainer's report), and each rank's peak RSS. Under it, the accuracy difference of every smaller
rate against the largest on each set.
"""
from __future__ import annotations

import collections
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

from ..args import list_of, positive_int, rate
from ..bench import common, peak_rss

DEFAULT_RATES = (1.0, 0.3, 0.1)
DEFAULT_WORKERS = 2
DEFAULT_OUTPUT = os.path.join("work", "study", "rates")
DEFAULT_COMMAND = ("bash", "config.sh")

DESCRIPTION = """Train the same data, seed and steps at several sample rates, one run after another, and print
one table: final loss, verification accuracy on each .bin set, samples/s, the centers kept per step and peak
memory per rank. Each run is `horovodrun -np W -H localhost:W --gloo COMMAND` with only PFC_SAMPLE_RATE and
PFC_OUTPUT changed; COMMAND (after `--`) defaults to `bash config.sh`."""


class StudyError(common.BenchError):
    """The study cannot run as asked, or one of its runs failed."""


def study(rates=DEFAULT_RATES, workers=DEFAULT_WORKERS, output=DEFAULT_OUTPUT, command=DEFAULT_COMMAND, *,
          overwrite=False, as_json=False, out=None, log=None) -> dict:
    """Run the study; print its table (or JSON) to `out` and the runs' progress to `log`; return the report."""
    out, log = out or sys.stdout, log or sys.stderr
    rates = sorted({float(r) for r in rates}, reverse=True)
    command = list(command)
    if not rates or not all(0.0 < r <= 1.0 for r in rates):
        raise StudyError(f"sample rates must be in (0, 1], got {rates}")
    if command[:2] == list(DEFAULT_COMMAND) and not os.path.isfile(command[1]):
        raise StudyError(f"{os.path.abspath(command[1])}: not found; run the study from the repository's folder "
                         f"or name the worker command after `--`")
    if os.path.exists(output) and os.listdir(output):
        if not overwrite:
            raise StudyError(f"{output}: exists and is not empty (the study's earlier runs?); pass --overwrite "
                             f"to replace it, or choose another --output")
        shutil.rmtree(output)
    os.makedirs(output, exist_ok=True)
    launcher = common.horovodrun_local(workers)
    t_start = time.perf_counter()
    rows = [_run(launcher, command, r, workers, output, log) for r in rates]
    _compare(rows)
    report = {
        "study": "rates",
        "machine": common.machine_info(),
        "config": {"rates": rates, "workers": workers, "output": output, "command": " ".join(command),
                   "launcher": " ".join(launcher), "settings": _settings(rows[0]["output"])},
        "results": rows,
        "wall_s": time.perf_counter() - t_start,
    }
    common.emit(report, format_table, as_json, out)
    return report


def _run(launcher, command, r, workers, output, log) -> dict:
    run_dir = os.path.join(output, f"r{r:g}")
    rss_dir = run_dir + ".rss"
    os.makedirs(rss_dir)
    env = {"PFC_SAMPLE_RATE": repr(r), "PFC_OUTPUT": run_dir, "PFC_RESUME": ""}
    # `env` sets the two variables inside each launched worker; the peak-RSS wrapper records its memory.
    cmd = [*launcher, "env", *(f"{k}={v}" for k, v in env.items()), sys.executable, "-m", "partial_fc.bench.peak_rss",
           rss_dir, *command]
    where = f"study rates: r={r:g}"
    print(f"{where}: {' '.join(cmd)}", file=log, flush=True)
    tail = collections.deque(maxlen=40)
    t0 = time.perf_counter()
    with open(run_dir + ".log", "w") as transcript:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                text=True, errors="replace")
        for line in proc.stdout:
            transcript.write(line)
            tail.append(line.rstrip())
            text = line.split(">:", 1)[-1].strip()  # horovodrun prefixes "[0]<stdout>:"
            if text.startswith(("step ", "loss ")) or text.startswith("synth_"):
                print(f"{where}: {text}", file=log, flush=True)
        rc = proc.wait()
    if rc != 0:
        lines = [l for l in tail if l.strip()]
        raise StudyError(f"{where}: the run exited with status {rc} (its output: {run_dir}.log): "
                         f"{lines[-1].strip() if lines else 'no output'}")
    row = {"rate": r, "output": run_dir, "run_wall_s": time.perf_counter() - t0, **_read_metrics(run_dir, where)}
    try:
        row["peak_rss_bytes"] = peak_rss.read(rss_dir, workers)
    except (OSError, ValueError, KeyError) as e:
        raise StudyError(f"{where}: {rss_dir}: a rank's peak RSS is missing ({e})") from None
    return row


def _read_metrics(run_dir: str, where: str) -> dict:
    """Final loss, last accuracies, samples/s and the sampler's figures from a run's metrics.jsonl."""
    path = os.path.join(run_dir, "metrics.jsonl")
    try:
        with open(path) as f:
            records = [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError) as e:
        raise StudyError(f"{where}: {path}: cannot be read ({e})") from None
    windows = [rec for rec in records if "loss" in rec]
    checks = [rec for rec in records if any(k.startswith("val/") for k in rec)]
    if not windows:
        raise StudyError(f"{where}: {path}: holds no loss report")
    last = windows[-1]
    speeds = [rec["samples_per_s"] for rec in windows[1:]] or [windows[0]["samples_per_s"]]
    accuracy = {}
    if checks:
        final = checks[-1]
        accuracy = {k[len("val/"):-len("/accuracy")]: v for k, v in sorted(final.items())
                    if k.startswith("val/") and k.endswith("/accuracy")}
    sampled = [rec for rec in windows if "sampled_rows" in rec]
    mean = lambda key: statistics.fmean(rec[key] for rec in sampled) if sampled else None  # noqa: E731
    return {"steps": last["step"], "final_loss": last["loss"], "first_loss": windows[0]["loss"],
            "accuracy": accuracy, "accuracy_step": checks[-1]["step"] if checks else None,
            "samples_per_s": statistics.median(speeds), "kept_rows": mean("sampled_rows"),
            "kept_positives": mean("sampled_positives"), "kept_negatives": mean("sampled_negatives"),
            "negatives_seen": mean("negatives_seen")}


def _settings(run_dir: str) -> dict:
    """The first run's config.json (what every run shared, apart from its rate and output)."""
    try:
        with open(os.path.join(run_dir, "config.json")) as f:
            cfg = json.load(f)
    except (OSError, ValueError):
        return {}
    return {k: cfg.get(k) for k in ("data_dir", "network", "embedding_size", "batch_size", "loss", "max_steps",
                                    "lr", "seed", "num_classes")}


def _compare(rows: list[dict]) -> None:
    """Each row's samples/s and accuracies against the largest rate's."""
    ref = rows[0]
    for row in rows:
        row["ref_rate"] = ref["rate"]
        row["vs_ref"] = row["samples_per_s"] / ref["samples_per_s"]
        row["accuracy_gap"] = {name: row["accuracy"][name] - acc for name, acc in ref["accuracy"].items()
                               if name in row["accuracy"]}


def format_table(report: dict) -> str:
    c, rows = report["config"], report["results"]
    s = c["settings"]
    sets = sorted({name for row in rows for name in row["accuracy"]})
    ref = rows[0]["rate"]
    lines = [
        f"partial-fc study rates: {c['workers']} workers, {c['command']}; "
        + ", ".join(f"{k} {v}" for k, v in s.items() if v not in (None, "")),
        *common.machine_lines(report["machine"]),
        "",
    ]
    body = [(f"{r['rate']:g}", f"{r['final_loss']:.3f}", *(_acc(r, name) for name in sets),
             f"{r['samples_per_s']:.1f}", f"{r['vs_ref']:.2f}", _kept(r),
             " ".join(f"{b / common.GIB:.2f}" for b in r["peak_rss_bytes"]), "") for r in rows]
    lines += common.table(("r", "final loss", *sets, "samples/s", f"vs r={ref:g}", "kept per shard (pos+neg)",
                           "peak RSS GiB/rank", ""), body)
    lines.append("")
    for r in rows[1:]:
        gaps = ", ".join(f"{name} {100 * gap:+.2f} points" for name, gap in r["accuracy_gap"].items())
        lines.append(f"r = {r['rate']:g} against r = {ref:g}: {gaps or 'no verification sets'}")
    lines += [
        "final loss = mean over the last report window; accuracy = 10-fold verification at the last step; "
        "samples/s = median over the report windows after the first; kept = one shard's centers per step, "
        "averaged (the batch's classes + drawn negatives); peak RSS = each rank's peak, rank 0 first.",
        f"wall time {report['wall_s']:.0f} s; runs in {c['output']}",
    ]
    return "\n".join(lines) + "\n"


def _acc(row, name) -> str:
    return f"{row['accuracy'][name]:.4f}" if name in row["accuracy"] else "n/a"


def _kept(row) -> str:
    if row["kept_rows"] is None:
        return "n/a"
    return f"{row['kept_rows']:.0f} ({row['kept_positives']:.0f}+{row['kept_negatives']:.0f})"


# ---- the command ------------------------------------------------------------------------------------------

def add_arguments(p) -> None:
    p.add_argument("--rates", type=list_of(rate), default=",".join(map(str, DEFAULT_RATES)),
                   help="comma-separated sample rates (default: %(default)s)")
    p.add_argument("--workers", type=positive_int, default=DEFAULT_WORKERS,
                   help="workers per run, on this machine (default: %(default)s)")
    p.add_argument("--output", default=DEFAULT_OUTPUT, help="folder of the runs, one r<rate> each (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier study's runs in --output")
    # Not `command`: cli.py's own attribute names the chosen subcommand.
    p.add_argument("worker_command", nargs="*", metavar="-- COMMAND",
                   help="what each worker runs (default: bash config.sh)")


def run(args) -> int:
    study(args.rates, args.workers, args.output, args.worker_command or DEFAULT_COMMAND, overwrite=args.overwrite,
          as_json=args.json)
    return 0
