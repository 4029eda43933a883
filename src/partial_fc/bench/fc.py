"""`partial-fc bench fc`: time one step of the Partial FC operator at several sample rates.

Single process, world size 1 (LocalComm), so N_local = num_classes. For each N_local the operator step
    out = PartialFC.forward_backward(features, labels, step); PartialFC.update(out, lr)
is timed at every sample rate r, all rates sharing one memory bank (the centers' values do not change the
cost). MXNet is asynchronous: every timer stops after mx.nd.waitall(). Each timed repeat runs, per rate, one
plain step (no waits inside: the step as training runs it) and one phased step (PartialFC.clock set: a
wait and a clock reading around each phase). Reported per (N_local, r), medians over `repeat`
repeats after one warm-up:
    step          seconds of the plain step
    ratio         t(r_ref) / t(r), r_ref the largest rate; its ceiling is S(r_ref) / S(r)
    paired        the median over repeats of each repeat's own t(r_ref) / t(r): the two steps of a repeat run
                  seconds apart, so a machine that slows down for a while (another guest on a VM) moves both
    sampler       seconds of op.sampler.sample(labels, step) alone, and its share of the step
    phases        seconds per phase of the phased step: exchange, sample, gather, normalise (the centers'
                  norms, the 1/|w| scaling and the gradient's projection), matmul (the matrix products alone),
                  softmax, scatter, update, and "other" (the step's time outside every phase); they sum to the
                  phased step
    matmul        the step's three matmuls (cosines F.w^T, dw = dcos^T.F, dF = dcos.w; w: the sampled centers),
                  2*B*S*D flops each; GFLOP/s over the "matmul" phase, against a plain numpy float32
                  [B, D] x [D, S] matmul timed in the same run (the share = matmul-phase GFLOP/s / numpy
                  GFLOP/s); for reference also the same product as one MXNet dot (MXNet links its own BLAS)
    lower bound   max(compute, bandwidth) seconds, where
                      compute   = 3 * (median seconds of that numpy matmul)   (the three matmuls at numpy's rate)
                      bandwidth = 5 * S * D * b / (numpy memcpy bandwidth measured in the same run)
                  with b the bytes per element of the bank's storage: the forward reads each sampled center once,
                  the update reads and writes the sampled rows of centers and momentum. "of bound" = bound / step:
                  1.0 would be a step that does nothing but its matmuls at numpy's rate (or moves only the bank
                  rows it must, at memcpy speed), whichever is slower.
N_local = 1e7 runs on request only: a point whose bank and estimated working set (step_bytes) do not fit in
MemAvailable is skipped with a line saying what it needs ("skipped: needs X GiB, Y available");
--bank-dtype float16 halves the bank.
Targets of the issue (shown with pass/fail, never asserted): ratio t(1)/t(0.1) >= 9 at N_local = 1e6
(ceiling 10); the sampler at most 2 % of the r = 0.1 step; matmul-phase GFLOP/s at least 70 % of numpy's.
"""
from __future__ import annotations

import contextlib
import statistics
import sys
import time

import mxnet as mx
import numpy as np

from ..dist import LocalComm
from ..head import memory_plan, precision
from ..head.margin import Margin
from ..head.memory_bank import MemoryBank
from ..head.memory_plan import chunk_rows_for
from ..head.operator import PartialFC
from ..head.sampler import num_sampled
from ..args import list_of, positive_int, rate
from . import common
from .common import (GIB, add_bank_dtype, add_dim, check_bank_dtype, emit, machine_info,
                     machine_lines, median_time, memcpy_bandwidth, ms, skip_record, table, target_labels)

DEFAULT_N_LOCAL = (100_000, 1_000_000)
DEFAULT_RATES = (1.0, 0.3, 0.1)
DEFAULT_BATCH, DEFAULT_DIM, DEFAULT_REPEAT = 128, 512, 3
LR = 0.1
MATMULS_PER_STEP = 3
# Bank traffic of the ideal sparse step, in rows of centers or momentum: read the centers for the forward,
# read and write centers and momentum in the update.
BANK_PASSES = 5
# The phases PartialFC.clock sees (names repeat within a step; the clock adds them up).
PHASES = ("exchange", "sample", "gather", "normalise", "matmul", "softmax", "scatter", "update")

# The targets. The ratio one holds at N_local = 1e6 only; the others at every N_local.
TARGET_RATIO = {"n_local": 1_000_000, "ref_rate": 1.0, "rate": 0.1, "min": 9.0}
TARGET_SAMPLER = {"rate": 0.1, "max_share": 0.02}
TARGET_MATMUL = {"min_share": 0.70}


def benchmark(n_local=DEFAULT_N_LOCAL, batch=DEFAULT_BATCH, dim=DEFAULT_DIM, rates=DEFAULT_RATES,
        repeat=DEFAULT_REPEAT, *, bank_dtype="float32", seed=0, as_json=False, out=None, log=None) -> dict:
    """Run the benchmark, print a table (or JSON with as_json) to `out`, progress lines to `log`.

    n_local: class counts per rank; rates: sample rates in (0, 1]; repeat: timed steps per point;
    bank_dtype: storage of centers and momentum. Returns the report as a dict (what --json prints).
    """
    out = out or sys.stdout
    log = log or sys.stderr
    n_local = [int(n) for n in n_local]
    rates = sorted({float(r) for r in rates}, reverse=True)
    if not n_local or min(n_local) < 1:
        raise ValueError(f"n_local must be positive class counts, got {n_local}")
    if not rates or not all(0.0 < r <= 1.0 for r in rates):
        raise ValueError(f"sample rates must be in (0, 1], got {rates}")
    if batch < 1 or dim < 1 or repeat < 1:
        raise ValueError(f"batch, dim and repeat must be >= 1, got {batch}, {dim}, {repeat}")
    check_bank_dtype(bank_dtype)

    t_start = time.perf_counter()
    rng = np.random.default_rng(seed)
    numpy_ref: dict[int, float] = {}  # S -> median seconds of the numpy matmul
    mxnet_ref: dict[int, float] = {}  # S -> median seconds of the same product as one MXNet dot
    memcpy = memcpy_bandwidth()
    results, skipped = [], []
    for n in n_local:
        need = step_bytes(n, dim, rates, batch, bank_dtype)
        have = common.available_memory()
        if have is not None and need > have:
            skipped.append(skip_record(n, rates, need, have, log))
            continue
        print(f"bench fc: N_local={n}: creating the memory bank ({bank_dtype}) ...", file=log, flush=True)
        results += _bench_n_local(n, batch, dim, rates, repeat, seed, bank_dtype, rng, numpy_ref, mxnet_ref, memcpy,
                                  log)
    report = {
        "benchmark": "fc",
        "machine": machine_info(),
        "config": {"n_local": n_local, "batch": batch, "dim": dim, "rates": rates, "repeat": repeat,
                   "warmup": 1, "seed": seed, "bank_dtype": bank_dtype, "margin": "arcface s=64 m=(1, 0.5, 0)",
                   "lr": LR, "ctx": "cpu", "world_size": 1},
        "memcpy_gb_s": memcpy / 1e9,
        "results": results,
        "skipped": skipped,
        "targets": _targets(results),
        "wall_s": time.perf_counter() - t_start,
    }
    emit(report, format_table, as_json, out)
    return report


def _bench_n_local(n, batch, dim, rates, repeat, seed, bank_dtype, rng, numpy_ref, mxnet_ref, memcpy,
                   log) -> list[dict]:
    bank = make_bank(n, dim, seed, bank_dtype)
    features = mx.nd.array(rng.standard_normal((batch, dim), dtype=np.float32), ctx=mx.cpu())
    labels = rng.integers(0, n, size=batch, dtype=np.int64)
    ops = {r: PartialFC(LocalComm(), n, dim, Margin(s=64, m1=1, m2=0.5, m3=0), r, bank=bank, seed=seed,
                        ctx=mx.cpu()) for r in rates}
    mx.nd.waitall()

    step_times = {r: [] for r in rates}
    phased = {r: [] for r in rates}
    sampled = {}
    print(f"bench fc: N_local={n}: warm-up and {repeat} timed repeat(s) at r={rates}", file=log, flush=True)
    # Step 0 is the warm-up; the rates alternate within each repeat so that drift hits them alike.
    for step in range(repeat + 1):
        for r in rates:
            seconds, sampled[r] = time_step(ops[r], features, labels, 2 * step)
            phases = time_phased_step(ops[r], features, labels, 2 * step + 1)
            if step:
                step_times[r].append(seconds)
                phased[r].append(phases)

    rows = []
    ref = rates[0]
    itemsize = precision.itemsize(bank_dtype)
    for r in rates:
        sampler_s = median_time(lambda step: ops[r].sampler.sample(labels, step), max(repeat, 10))
        s = sampled[r]
        if s not in numpy_ref:
            numpy_ref[s] = _numpy_matmul_time(batch, dim, s, max(repeat, 5), rng)
            mxnet_ref[s] = _mxnet_dot_time(batch, dim, s, max(repeat, 5), rng)
        step_s = statistics.median(step_times[r])
        flop = MATMULS_PER_STEP * 2.0 * batch * s * dim
        numpy_gflops = 2.0 * batch * s * dim / numpy_ref[s] / 1e9
        phase_s = median_phases(phased[r])
        matmul_s = phase_s.get("matmul")
        matmul_gflops = flop / matmul_s / 1e9 if matmul_s else None
        compute_s = MATMULS_PER_STEP * numpy_ref[s]
        bandwidth_s = BANK_PASSES * s * dim * itemsize / memcpy
        bound_s = max(compute_s, bandwidth_s)
        rows.append({
            "n_local": n, "rate": r, "sampled": s,
            "step_s": step_s, "step_times_s": step_times[r],
            "ratio": statistics.median(step_times[ref]) / step_s, "ratio_ref_rate": ref,
            "ratio_paired": statistics.median(a / b for a, b in zip(step_times[ref], step_times[r])),
            "ratio_ceiling": sampled[ref] / s,
            "sampler_s": sampler_s, "sampler_share": sampler_s / step_s,
            "phased_step_s": statistics.median(p["total"] for p in phased[r]),
            "phases_s": phase_s, "phased_steps": phased[r],
            "matmul_gflop": flop / 1e9, "gflops": flop / step_s / 1e9,
            "matmul_phase_s": matmul_s, "matmul_gflops": matmul_gflops,
            "numpy_matmul_s": numpy_ref[s], "numpy_gflops": numpy_gflops,
            "matmul_share": matmul_gflops / numpy_gflops if matmul_gflops else None,
            "mxnet_dot_s": mxnet_ref[s], "mxnet_dot_gflops": 2.0 * batch * s * dim / mxnet_ref[s] / 1e9,
            "bound_compute_s": compute_s, "bound_bandwidth_s": bandwidth_s, "bound_s": bound_s,
            "bound_bytes": BANK_PASSES * s * dim * itemsize, "of_bound": bound_s / step_s,
        })
    del ops, bank
    mx.nd.waitall()
    return rows


# ---- pieces the other benchmarks reuse ------------------------------------------------------------------

def make_bank(n: int, dim: int, seed: int, dtype: str) -> MemoryBank:
    """A fresh device bank of n rows stored as `dtype`."""
    check_bank_dtype(dtype)
    return MemoryBank.create(n, dim, seed=seed, ctx=mx.cpu(), dtype=dtype)


def bank_bytes(count: int, dim: int, dtype: str) -> int:
    """Analytic bytes of centers + momentum of one shard: memory_plan.bank_bytes, the formula the README uses."""
    return int(memory_plan.bank_bytes(count, dim, dtype))


def step_bytes(n: int, dim: int, rates, batch: int, dtype: str) -> int:
    """Estimated peak bytes of one operator at N_local = n: the bank, plus the step's temporaries at the
    largest rate (at most 4 float32 copies of the sampled rows the operator handles at a time: gathered
    centers, their gradient and the update's two row copies; about 8 float32 [B, S] arrays: cosines, logits,
    exp, gradients), plus 0.5 GiB for the process. An estimate on the safe side, for skipping points that
    cannot fit; bench memory measures the real peak."""
    s = max(num_sampled(n, r, batch) for r in rates)
    rows = min(s, chunk_rows_for(dim, dtype, s))
    return bank_bytes(n, dim, dtype) + 4 * 4 * rows * dim + 8 * 4 * batch * s + int(0.5 * GIB)


def time_step(op: PartialFC, features, labels, step: int) -> tuple[float, int]:
    """Seconds of one plain operator step (no waits inside it) and the number of rows it sampled."""
    mx.nd.waitall()
    t0 = time.perf_counter()
    out = op.forward_backward(features, labels, step)
    op.update(out, LR)
    mx.nd.waitall()  # MXNet runs asynchronously: stop the clock only once every queued op has finished
    return time.perf_counter() - t0, int(out.sample.index.size)


class PhaseClock:
    """The operator's `clock`: phase(name) waits for MXNet before and after the work it wraps and charges the
    time in between to `name` (the operator's stages are timed alone, not what MXNet still had queued)."""

    def __init__(self):
        self.phases: dict[str, float] = {}

    def start(self) -> float:
        mx.nd.waitall()
        self.phases = {}
        return time.perf_counter()

    @contextlib.contextmanager
    def phase(self, name: str):
        mx.nd.waitall()
        t0 = time.perf_counter()
        yield
        mx.nd.waitall()
        self.phases[name] = self.phases.get(name, 0.0) + time.perf_counter() - t0


def time_phased_step(op, features, labels, step: int, clock: PhaseClock | None = None) -> dict:
    """One operator step with op.clock set: {phase: seconds, ..., "other": rest, "total": seconds}.

    "other" is the step's time outside every phase (Python between the stages), so the phases always sum to
    "total". The clock is removed afterwards. clock: a PhaseClock (subclass) to time with; default a plain one.
    """
    clock = clock or PhaseClock()
    op.clock = clock
    try:
        t0 = clock.start()
        out = op.forward_backward(features, labels, step)
        op.update(out, LR)
        mx.nd.waitall()
        t1 = time.perf_counter()
    finally:
        op.clock = None
    phases = dict(clock.phases)
    phases["other"] = max(0.0, t1 - t0 - sum(phases.values()))
    phases["total"] = t1 - t0
    return phases


def median_phases(steps: list[dict]) -> dict:
    """Per-phase medians over steps (a phase missing from a step counts 0 there); without "total"."""
    names = [p for p in (*PHASES, "other") if any(p in s for s in steps)]
    names += sorted({k for s in steps for k in s} - set(names) - {"total"})
    return {p: statistics.median(s.get(p, 0.0) for s in steps) for p in names}


def _numpy_matmul_time(batch: int, dim: int, s: int, repeat: int, rng) -> float:
    """Median seconds of a float32 [B, D] x [D, S] numpy matmul, laid out as the step's F.w^T."""
    a = rng.random((batch, dim), dtype=np.float32)
    w = rng.random((s, dim), dtype=np.float32)
    return median_time(lambda _: a @ w.T, repeat)


def _mxnet_dot_time(batch: int, dim: int, s: int, repeat: int, rng) -> float:
    """Median seconds of the same product as one MXNet dot (F.w^T, transpose_b), MXNet's own BLAS: tells the
    BLAS's share of a gap to numpy from the operator's own."""
    a = mx.nd.array(rng.random((batch, dim), dtype=np.float32))
    w = mx.nd.array(rng.random((s, dim), dtype=np.float32))
    return median_time(lambda _: mx.nd.dot(a, w, transpose_b=True).wait_to_read(), repeat)


def _targets(results: list[dict]) -> list[dict]:
    out = []
    for row in results:
        if (row["n_local"] == TARGET_RATIO["n_local"] and row["rate"] == TARGET_RATIO["rate"]
                and row["ratio_ref_rate"] == TARGET_RATIO["ref_rate"]):
            out.append({"name": "ratio", "n_local": row["n_local"], "rate": row["rate"], "value": row["ratio"],
                        "min": TARGET_RATIO["min"], "ceiling": row["ratio_ceiling"],
                        "pass": row["ratio"] >= TARGET_RATIO["min"]})
        if row["rate"] == TARGET_SAMPLER["rate"]:
            out.append({"name": "sampler_share", "n_local": row["n_local"], "rate": row["rate"],
                        "value": row["sampler_share"], "max": TARGET_SAMPLER["max_share"],
                        "pass": row["sampler_share"] <= TARGET_SAMPLER["max_share"]})
        if row["matmul_share"] is not None:
            out.append({"name": "matmul_share", "n_local": row["n_local"], "rate": row["rate"],
                        "value": row["matmul_share"], "min": TARGET_MATMUL["min_share"],
                        "pass": row["matmul_share"] >= TARGET_MATMUL["min_share"]})
    return out


def format_table(report: dict) -> str:
    c = report["config"]
    lines = [
        f"partial-fc bench fc: one operator step (forward_backward + update), world size 1, "
        f"B={c['batch']} D={c['dim']}, bank {c['bank_dtype']}, median of {c['repeat']} after 1 warm-up",
        *machine_lines(report["machine"]),
        f"numpy memcpy bandwidth (read + write): {report['memcpy_gb_s']:.1f} GB/s",
        "",
    ]
    labels = {"ratio": lambda t: f"ratio>={t['min']:g}", "sampler_share": lambda t: f"sampler<={t['max']:.0%}",
              "matmul_share": lambda t: f"matmul>={t['min']:.0%}"}
    by_table = {}
    for t in report["targets"]:
        which = "throughput" if t["name"] == "matmul_share" else "step"
        by_table.setdefault(which, []).append(t)
    step_targets = target_labels(by_table.get("step", []), lambda t: (t["n_local"], t["rate"]),
                                 lambda t: labels[t["name"]](t))
    tput_targets = target_labels(by_table.get("throughput", []), lambda t: (t["n_local"], t["rate"]),
                                 lambda t: labels[t["name"]](t))
    results = report["results"]
    rows = [(f"{r['n_local']:,}", f"{r['rate']:g}", f"{r['sampled']:,}", ms(r["step_s"]), f"{r['ratio']:.2f}",
             f"{r['ratio_paired']:.2f}", f"{r['ratio_ceiling']:.1f}", f"{r['sampler_s'] * 1e3:.2f}",
             f"{r['sampler_share']:.2%}", "; ".join(step_targets.get((r["n_local"], r["rate"]), ["-"])))
            for r in results]
    if rows:
        lines += ["step (plain, no waits inside):"]
        lines += table(("N_local", "r", "S", "step ms", "ratio", "paired", "ceil", "sampler ms", "sampler %",
                        "target"), rows)

        names = list(dict.fromkeys(p for r in results for p in r["phases_s"]))
        rows = [(f"{r['n_local']:,}", f"{r['rate']:g}", ms(r["phased_step_s"]),
                 *(ms(r["phases_s"].get(p)) for p in names), "") for r in results]
        lines += ["", "phases of the phased step (ms; a wait at the end of each phase; they sum to the phased step):"]
        lines += table(("N_local", "r", "phased ms", *names, ""), rows)

        rows = [(f"{r['n_local']:,}", f"{r['rate']:g}", ms(r["matmul_phase_s"]),
                 "n/a" if r["matmul_gflops"] is None else f"{r['matmul_gflops']:.1f}", f"{r['numpy_gflops']:.1f}",
                 f"{r['mxnet_dot_gflops']:.1f}",
                 "n/a" if r["matmul_share"] is None else f"{r['matmul_share']:.0%}", f"{r['gflops']:.1f}",
                 ms(r["bound_compute_s"]), ms(r["bound_bandwidth_s"]), f"{r['of_bound']:.0%}",
                 "; ".join(tput_targets.get((r["n_local"], r["rate"]), ["-"]))) for r in results]
        lines += ["", "throughput and lower bound:"]
        lines += table(("N_local", "r", "matmul ms", "GFLOP/s", "numpy GFLOP/s", "mxnet dot", "share", "step GFLOP/s",
                        "compute ms", "bandwidth ms", "of bound", "target"), rows)
    lines += [f"N_local={s['n_local']:,}: {s['message']}" for s in report["skipped"]]
    lines += [
        "",
        f"ratio = t(r={results[0]['ratio_ref_rate']:g}) / t(r) on the median steps, paired = median of each repeat's "
        "own ratio (steady when the machine's speed drifts), ceil = S(ref) / S. " if results else "",
        f"GFLOP/s: the step's {MATMULS_PER_STEP} matmuls (2*B*S*D flops each) over the matmul phase "
        "(step GFLOP/s: over the whole plain step); numpy = one float32 [B,D]x[D,S] matmul; share = GFLOP/s / numpy;",
        "mxnet dot = GFLOP/s of the same product as one mx.nd.dot (MXNet's BLAS), for reference.",
        f"lower bound = max(compute = {MATMULS_PER_STEP} x numpy matmul time, bandwidth = {BANK_PASSES}*S*D*bytes "
        "of bank rows / memcpy bandwidth); of bound = bound / plain step.",
        f"wall time {report['wall_s']:.1f} s",
    ]
    return "\n".join(lines) + "\n"


DESCRIPTION = ("Time one step of the Partial FC operator (forward_backward + update) in one process at several "
               "sample rates, with the sampler's share and the matmul GFLOP/s against numpy.")


def add_arguments(parser) -> None:
    parser.add_argument("--n-local", type=list_of(positive_int), default=list(DEFAULT_N_LOCAL), metavar="N[,N...]",
                        help="classes on this rank (default: %(default)s; 1e7 runs when its bank fits in free "
                             "memory)")
    parser.add_argument("--batch", type=positive_int, default=DEFAULT_BATCH,
                        help="global batch B (default: %(default)s)")
    add_dim(parser)
    parser.add_argument("--rates", type=list_of(rate), default=list(DEFAULT_RATES), metavar="R[,R...]",
                        help="sample rates in (0, 1]; ratios are taken against the largest (default: %(default)s)")
    parser.add_argument("--repeat", type=positive_int, default=DEFAULT_REPEAT,
                        help="timed steps per point, after one warm-up; the median is reported (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of labels, features, centers and sampler (default: %(default)s)")
    add_bank_dtype(parser)


def run(args) -> int:
    benchmark(n_local=args.n_local, batch=args.batch, dim=args.dim, rates=args.rates, repeat=args.repeat,
              bank_dtype=args.bank_dtype, seed=args.seed, as_json=args.json)
    return 0
