"""`partial-fc bench memory`: peak resident memory of one rank's memory bank and FC steps, against the
analytic size of centers + momentum (memory_plan.bank_bytes, the formula the README's memory plan uses).

Each (N_local, r, bank dtype) point runs in its own child process, so that peaks do not mix. The child
    1. imports mxnet and the operator, creates the bank (device storage, world size 1), then writes every
       element of the momentum (untouched zero pages would hide it: they are not resident until written);
    2. reads VmHWM (peak resident set) from /proc/self/status: the creation peak;
    3. resets VmHWM (writing 5 to /proc/self/clear_refs), runs `steps` FC steps (forward_backward + update) at
       rate r and reads VmHWM again: the steps' peak;
    4. reports peak = max of the two (the process's whole-life peak) and both parts.
A separate child that only imports the same modules gives the baseline (its VmHWM). Columns:
    analytic     bank_bytes(N_local, D, dtype): centers + momentum
    peak         the child's peak RSS, baseline included
    peak - base  the same without the baseline
    ratio        peak / analytic: this COUNTS the baseline (the strict reading of "peak per rank")
    net ratio    (peak - baseline) / analytic
    vs float32   peak / peak of the float32 bank at the same (N_local, r)
Targets of the issue (shown with pass/fail, never asserted), at r = 0.1, N_local = 1e6: the float32 ratio
<= 1.15; a compact (float16 / bfloat16) bank's "vs float32" <= 0.55 ("fp16 storage halves it"). A point
whose estimated need (bench fc's estimate) exceeds MemAvailable is skipped with its numbers.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from ..args import list_of, positive_int, rate
from . import common, fc

DEFAULT_N_LOCAL = (100_000, 1_000_000)
DEFAULT_RATES = (0.1, 1.0)
DEFAULT_STEPS = 3
DEFAULT_DTYPES = ("float32", "float16")
CHILD_TIMEOUT_S = 1800
TARGET = {"n_local": 1_000_000, "rate": 0.1, "max_ratio": 1.15}
# "fp16 storage halves it": a compact bank's peak within 10 % of half the float32 bank's, same point.
TARGET_COMPACT = {"max_vs_float32": 0.55}


def bank_dtype(text: str) -> str:
    """argparse type: a storage dtype name."""
    if text not in common.BANK_DTYPES:
        raise argparse.ArgumentTypeError(f"unknown bank dtype {text!r} (known: {', '.join(common.BANK_DTYPES)})")
    return text


def benchmark(n_local=DEFAULT_N_LOCAL, rates=DEFAULT_RATES, dtypes=None, batch=fc.DEFAULT_BATCH, dim=fc.DEFAULT_DIM,
        steps=DEFAULT_STEPS, *, seed=0, as_json=False, out=None, log=None) -> dict:
    """Run every point in a child process; print a table (or JSON) to `out`, progress to `log`.

    dtypes None: float32 and float16. Returns the report dict.
    """
    out = out or sys.stdout
    log = log or sys.stderr
    n_local = [int(n) for n in n_local]
    rates = [float(r) for r in rates]
    dtypes = list(dict.fromkeys(dtypes or DEFAULT_DTYPES))
    for d in dtypes:
        common.check_bank_dtype(d)
    if not n_local or min(n_local) < 1 or not rates or not all(0.0 < r <= 1.0 for r in rates):
        raise ValueError(f"bad points: n_local={n_local}, rates={rates}")
    if batch < 1 or dim < 1 or steps < 1:
        raise ValueError("batch, dim and steps must be >= 1")

    t_start = time.perf_counter()
    print("bench memory: baseline (a process that imported mxnet) ...", file=log, flush=True)
    baseline = _child({"mode": "baseline"})
    rows, skipped = [], []
    for n in n_local:
        for r in rates:
            for d in dtypes:
                need, have = fc.step_bytes(n, dim, [r], batch, d), common.available_memory()
                if have is not None and need > have:
                    skipped.append({**common.skip_record(n, [r], need, have, log), "rate": r, "dtype": d})
                    continue
                print(f"bench memory: N_local={n} r={r:g} {d} ...", file=log, flush=True)
                got = _child({"mode": "point", "n_local": n, "rate": r, "dtype": d, "batch": batch, "dim": dim,
                              "steps": steps, "seed": seed})
                analytic = fc.bank_bytes(n, dim, d)
                rows.append({"n_local": n, "rate": r, "dtype": d, "analytic_bytes": analytic, **got,
                             "baseline_bytes": baseline["peak_bytes"],
                             "net_bytes": got["peak_bytes"] - baseline["peak_bytes"],
                             "ratio": got["peak_bytes"] / analytic,
                             "net_ratio": (got["peak_bytes"] - baseline["peak_bytes"]) / analytic})
    for row in rows:
        ref = next((x for x in rows if x["dtype"] == "float32" and x["n_local"] == row["n_local"]
                    and x["rate"] == row["rate"]), None)
        row["vs_float32"] = row["peak_bytes"] / ref["peak_bytes"] if ref else None
    report = {
        "benchmark": "memory",
        "machine": common.machine_info(),
        "config": {"n_local": n_local, "rates": rates, "dtypes": dtypes, "batch": batch, "dim": dim,
                   "steps": steps, "seed": seed, "storage": "device", "world_size": 1,
                   "ratio_counts_baseline": True},
        "baseline": baseline,
        "results": rows,
        "skipped": skipped,
        "targets": _targets(rows),
        "wall_s": time.perf_counter() - t_start,
    }
    common.emit(report, format_table, as_json, out)
    return report


def _child(spec: dict) -> dict:
    cmd = [sys.executable, "-m", "partial_fc.bench.memory", json.dumps(spec)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    if done.returncode != 0:
        detail = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise common.BenchError(f"memory child {spec} failed: {detail}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"/proc/self/status has no {field}")


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _child_main(spec: dict) -> dict:
    # The same imports in both modes, so that the baseline is what a point pays before its bank.
    import mxnet as mx
    import numpy as np

    from ..dist import LocalComm
    from ..head.margin import Margin
    from ..head.operator import PartialFC

    mx.nd.waitall()
    if spec["mode"] == "baseline":
        return {"peak_bytes": _status_bytes("VmHWM"), "rss_bytes": _status_bytes("VmRSS")}
    n, dim, batch = spec["n_local"], spec["dim"], spec["batch"]
    bank = fc.make_bank(n, dim, spec["seed"], spec["dtype"])
    if isinstance(bank.mom, np.ndarray):
        bank.mom.fill(0)
    else:
        bank.mom[:] = 0  # write every page: untouched zero pages are not resident
    mx.nd.waitall()
    create_peak, bank_rss = _status_bytes("VmHWM"), _status_bytes("VmRSS")
    reset = _reset_peak()

    rng = np.random.default_rng(spec["seed"])
    op = PartialFC(LocalComm(), n, dim, Margin(s=64, m1=1, m2=0.5, m3=0), spec["rate"], bank=bank,
                   seed=spec["seed"], ctx=mx.cpu())
    features = mx.nd.array(rng.standard_normal((batch, dim), dtype=np.float32))
    labels = rng.integers(0, n, size=batch, dtype=np.int64)
    step_s = [fc.time_step(op, features, labels, step)[0] for step in range(spec["steps"])]
    steps_peak = _status_bytes("VmHWM")
    return {"peak_bytes": max(create_peak, steps_peak) if reset else steps_peak,
            "create_peak_bytes": create_peak, "steps_peak_bytes": steps_peak if reset else None,
            "bank_rss_bytes": bank_rss, "peak_reset": reset, "step_s": step_s}


def _gib(x) -> str:
    return "n/a" if x is None else f"{x / common.GIB:.3f}"


def format_table(report: dict) -> str:
    c, base = report["config"], report["baseline"]
    lines = [
        f"partial-fc bench memory: peak RSS of one rank (child process per point: bank created, momentum "
        f"written, {c['steps']} FC steps), B={c['batch']} D={c['dim']}, {c['storage']} storage",
        *common.machine_lines(report["machine"]),
        f"baseline (a process that imported mxnet and the operator): {_gib(base['peak_bytes'])} GiB",
        "",
    ]
    label = {"peak_ratio": "ratio", "vs_float32": "vs float32"}
    verdicts = {(t["n_local"], t["rate"], t["dtype"]):
                f"{label[t['name']]}<={t['max']:g} {'PASS' if t['pass'] else 'FAIL'}" for t in report["targets"]}
    head = ("N_local", "r", "dtype", "analytic GiB", "peak GiB", "peak-base GiB", "ratio", "net ratio",
            "create peak", "steps peak", "vs float32", "target")
    rows = [(f"{r['n_local']:,}", f"{r['rate']:g}", r["dtype"], _gib(r["analytic_bytes"]), _gib(r["peak_bytes"]),
             _gib(r["net_bytes"]), f"{r['ratio']:.3f}", f"{r['net_ratio']:.3f}", _gib(r["create_peak_bytes"]),
             _gib(r["steps_peak_bytes"]), "-" if r["vs_float32"] is None else f"{r['vs_float32']:.3f}",
             verdicts.get((r["n_local"], r["rate"], r["dtype"]), "-")) for r in report["results"]]
    if rows:
        lines += common.table(head, rows)
    lines += [f"N_local={s['n_local']:,} r={s['rate']:g} {s['dtype']}: {s['message']}" for s in report["skipped"]]
    lines += [
        "",
        "analytic = centers + momentum (memory_plan.bank_bytes); ratio = peak / analytic and COUNTS the baseline; "
        "net ratio = (peak - baseline) / analytic;",
        "create peak = peak RSS up to the bank's creation; steps peak = peak RSS during the FC steps "
        "(VmHWM reset in between).",
        f"wall time {report['wall_s']:.1f} s",
    ]
    return "\n".join(lines) + "\n"


def _targets(rows: list[dict]) -> list[dict]:
    """At the target point: the float32 peak against centers + momentum; a compact bank's peak against the
    float32 one's (what storing float16 saves), where both were measured."""
    out = []
    for r in rows:
        if r["n_local"] != TARGET["n_local"] or r["rate"] != TARGET["rate"]:
            continue
        if r["dtype"] == "float32":
            out.append({"name": "peak_ratio", "n_local": r["n_local"], "rate": r["rate"], "dtype": r["dtype"],
                        "value": r["ratio"], "max": TARGET["max_ratio"], "pass": r["ratio"] <= TARGET["max_ratio"]})
        elif r["vs_float32"] is not None:
            limit = TARGET_COMPACT["max_vs_float32"]
            out.append({"name": "vs_float32", "n_local": r["n_local"], "rate": r["rate"], "dtype": r["dtype"],
                        "value": r["vs_float32"], "max": limit, "pass": r["vs_float32"] <= limit})
    return out


DESCRIPTION = ("For each (N_local, r, bank dtype) a child process creates the bank, touches the momentum, runs a "
               "few FC steps and reports its peak resident memory, against the analytic size of centers + "
               "momentum and the resident memory of a process that only imported mxnet.")


def add_arguments(parser) -> None:
    parser.add_argument("--n-local", type=list_of(positive_int), default=list(DEFAULT_N_LOCAL), metavar="N[,N...]",
                        help="classes on this rank (default: %(default)s)")
    parser.add_argument("--rates", type=list_of(rate), default=list(DEFAULT_RATES), metavar="R[,R...]",
                        help="sample rates (default: %(default)s)")
    parser.add_argument("--dtypes", type=list_of(bank_dtype), default=list(DEFAULT_DTYPES), metavar="DTYPE[,DTYPE...]",
                        help="bank storage dtypes (default: %(default)s)")
    parser.add_argument("--batch", type=positive_int, default=fc.DEFAULT_BATCH,
                        help="global batch B (default: %(default)s)")
    common.add_dim(parser)
    parser.add_argument("--steps", type=positive_int, default=DEFAULT_STEPS,
                        help="FC steps each child runs (default: %(default)s)")


def run(args) -> int:
    benchmark(n_local=args.n_local, rates=args.rates, dtypes=args.dtypes, batch=args.batch, dim=args.dim,
              steps=args.steps, as_json=args.json)
    return 0


if __name__ == "__main__":  # a measuring child (see _child)
    print(json.dumps(_child_main(json.loads(sys.argv[1]))))
