"""`partial-fc bench fc`: time one step of the Partial FC operator at several sample rates.

Single process, world size 1 (LocalComm), so N_local = num_classes. For each N_local the operator step
    out = PartialFC.forward_backward(features, labels, step); PartialFC.update(out, lr)
is timed at every sample rate r, all rates sharing one memory bank (the centers' values do not change the
cost). Reported per (N_local, r):
    step          median seconds over `repeat` steps, after one warm-up step (MXNet is asynchronous:
                  every timer stops after mx.nd.waitall())
    ratio         t(r_ref) / t(r), r_ref the largest rate; its ceiling is S(r_ref) / S(r)
    sampler       median seconds of op.sampler.sample(labels, step) alone, and its share of the step
    GFLOP/s       the step's three matmuls (cosines F.W^T, dW = dcos^T.F, dF = dcos.W), 2*B*S*D flops each,
                  over the whole step time; compared with a plain numpy float32 matmul
                  [B, D] x [D, S] timed in the same run
Targets of the issue (shown with pass/fail, never asserted): ratio t(1)/t(0.1) >= 9 at N_local = 1e6
(ceiling 10), and the sampler at most 2 % of the r = 0.1 step.
"""
from __future__ import annotations

import ctypes
import json
import os
import statistics
import sys
import time

import mxnet as mx
import numpy as np

from ..dist import LocalComm
from ..margin import Margin
from ..memory_bank import MemoryBank
from ..partial_fc import PartialFC

DEFAULT_N_LOCAL = (100_000, 1_000_000)
DEFAULT_RATES = (1.0, 0.1)
DEFAULT_BATCH, DEFAULT_DIM, DEFAULT_REPEAT = 128, 512, 3
LR = 0.1
MATMULS_PER_STEP = 3

# The targets. The ratio one holds at N_local = 1e6 only; the sampler one at every N_local.
TARGET_RATIO = {"n_local": 1_000_000, "ref_rate": 1.0, "rate": 0.1, "min": 9.0}
TARGET_SAMPLER = {"rate": 0.1, "max_share": 0.02}


def run(n_local=DEFAULT_N_LOCAL, batch=DEFAULT_BATCH, dim=DEFAULT_DIM, rates=DEFAULT_RATES,
        repeat=DEFAULT_REPEAT, *, seed=0, as_json=False, out=None, log=None) -> dict:
    """Run the benchmark, print a table (or JSON with as_json) to `out`, progress lines to `log`.

    n_local: class counts per rank; rates: sample rates in (0, 1]; repeat: timed steps per point.
    Returns the report as a dict (the same object --json prints).
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

    t_start = time.perf_counter()
    rng = np.random.default_rng(seed)
    numpy_ref: dict[int, float] = {}  # S -> median seconds of the numpy matmul
    results = []
    for n in n_local:
        print(f"bench fc: N_local={n}: creating the memory bank ...", file=log, flush=True)
        results += _bench_n_local(n, batch, dim, rates, repeat, seed, rng, numpy_ref, log)
    report = {
        "benchmark": "fc",
        "machine": machine_info(),
        "config": {"n_local": n_local, "batch": batch, "dim": dim, "rates": rates, "repeat": repeat,
                   "warmup": 1, "seed": seed, "margin": "arcface s=64 m=(1, 0.5, 0)", "lr": LR,
                   "ctx": "cpu", "world_size": 1},
        "results": results,
        "targets": _targets(results),
        "wall_s": time.perf_counter() - t_start,
    }
    if as_json:
        json.dump(report, out, indent=2)
        out.write("\n")
    else:
        out.write(format_table(report))
    out.flush()
    return report


def _bench_n_local(n, batch, dim, rates, repeat, seed, rng, numpy_ref, log) -> list[dict]:
    bank = MemoryBank.create(n, dim, seed=seed, ctx=mx.cpu())
    features = mx.nd.array(rng.standard_normal((batch, dim), dtype=np.float32), ctx=mx.cpu())
    labels = rng.integers(0, n, size=batch, dtype=np.int64)
    ops = {r: PartialFC(LocalComm(), n, dim, Margin(s=64, m1=1, m2=0.5, m3=0), r, bank=bank, seed=seed,
                        ctx=mx.cpu()) for r in rates}
    mx.nd.waitall()

    step_times = {r: [] for r in rates}
    sampled = {}
    print(f"bench fc: N_local={n}: warm-up and {repeat} timed step(s) at r={rates}", file=log, flush=True)
    # Step 0 is the warm-up; the rates alternate within each repeat so that drift hits them alike.
    for step in range(repeat + 1):
        for r in rates:
            t = _time_step(ops[r], features, labels, step)
            sampled[r] = t[1]
            if step:
                step_times[r].append(t[0])

    rows = []
    ref = rates[0]
    for r in rates:
        sampler_s = _median_time(lambda step: ops[r].sampler.sample(labels, step), max(repeat, 10))
        s = sampled[r]
        if s not in numpy_ref:
            numpy_ref[s] = _numpy_matmul_time(batch, dim, s, repeat, rng)
        step_s = statistics.median(step_times[r])
        flop = MATMULS_PER_STEP * 2.0 * batch * s * dim
        gflops = flop / step_s / 1e9
        numpy_gflops = 2.0 * batch * s * dim / numpy_ref[s] / 1e9
        rows.append({
            "n_local": n, "rate": r, "sampled": s,
            "step_s": step_s, "step_times_s": step_times[r],
            "ratio": statistics.median(step_times[ref]) / step_s, "ratio_ref_rate": ref,
            "ratio_ceiling": sampled[ref] / s,
            "sampler_s": sampler_s, "sampler_share": sampler_s / step_s,
            "matmul_gflop": flop / 1e9, "gflops": gflops,
            "numpy_matmul_s": numpy_ref[s], "numpy_gflops": numpy_gflops, "vs_numpy": gflops / numpy_gflops,
        })
    del ops, bank
    mx.nd.waitall()
    return rows


def _time_step(op: PartialFC, features, labels, step: int) -> tuple[float, int]:
    mx.nd.waitall()
    t0 = time.perf_counter()
    out = op.forward_backward(features, labels, step)
    op.update(out, LR)
    mx.nd.waitall()  # MXNet runs asynchronously: stop the clock only once every queued op has finished
    return time.perf_counter() - t0, int(out.sample.index.size)


def _median_time(fn, repeat: int) -> float:
    fn(0)  # warm-up
    times = []
    for step in range(1, repeat + 1):
        t0 = time.perf_counter()
        fn(step)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _numpy_matmul_time(batch: int, dim: int, s: int, repeat: int, rng) -> float:
    """Median seconds of a float32 [B, D] x [D, S] numpy matmul, laid out as the step's F.W^T."""
    a = rng.random((batch, dim), dtype=np.float32)
    w = rng.random((s, dim), dtype=np.float32)
    return _median_time(lambda _: a @ w.T, repeat)


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
    return out


def machine_info() -> dict:
    """Cores, library versions and thread pools, as far as they can be read without the environment."""
    features = mx.runtime.Features()
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "mxnet": mx.__version__,
        "mxnet_features": [f for f in ("OPENMP", "BLAS_OPEN", "BLAS_MKL", "MKLDNN", "CUDA")
                           if features.is_enabled(f)],
        "numpy": np.__version__,
        "numpy_blas": ",".join(k.removesuffix("_info") for k in _numpy_blas_sections()) or None,
        "blas": _blas_libraries(),
        "process_threads": _process_threads(),
    }


def _numpy_blas_sections() -> list[str]:
    try:
        from numpy import __config__ as cfg
    except ImportError:
        return []
    return [k for k in dir(cfg) if k.endswith("_info") and "blas" in k and "lapack" not in k
            and not k.startswith("blas_")]


def _blas_libraries() -> dict:
    """Each OpenBLAS loaded in this process (MXNet's and numpy's are separate builds) with its thread
    count and build string, keyed by file name; what threadpoolctl would report. Best effort."""
    found = {}
    try:
        with open("/proc/self/maps") as f:
            paths = sorted({line.split()[-1] for line in f if "openblas" in line and line.split()[-1].startswith("/")})
    except OSError:
        return found
    for path in paths:
        try:
            lib = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LOCAL)
        except OSError:
            continue
        for suffix in ("", "64_"):  # numpy's ILP64 build suffixes its symbols with 64_
            threads = getattr(lib, "openblas_get_num_threads" + suffix, None)
            config = getattr(lib, "openblas_get_config" + suffix, None)
            if threads is not None:
                threads.restype, info = ctypes.c_int, {"threads": int(threads())}
                if config is not None:
                    config.restype = ctypes.c_char_p
                    info["config"] = config().decode(errors="replace").strip()
                found[os.path.basename(path)] = info
                break
    return found


def _process_threads() -> int | None:
    """Threads of this process now (MXNet engine workers, OpenMP and BLAS pools)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("Threads:"))
    except (OSError, StopIteration, ValueError):
        return None


def format_table(report: dict) -> str:
    m, c = report["machine"], report["config"]
    lines = [
        f"partial-fc bench fc: one operator step (forward_backward + update), world size 1, "
        f"B={c['batch']} D={c['dim']}, median of {c['repeat']} after 1 warm-up",
        f"machine: {m['cpu_count']} CPUs ({m['cpus_usable']} usable); mxnet {m['mxnet']} "
        f"[{' '.join(m['mxnet_features'])}]; numpy {m['numpy']} [{m['numpy_blas']}]",
        *(f"blas: {name}: {b['threads']} threads, {b.get('config', '?')}" for name, b in m["blas"].items()),
        f"process threads after the run: {m['process_threads']}",
        "",
    ]
    head = ("N_local", "r", "S", "step ms", "ratio", "ceil", "sampler ms", "sampler %",
            "GFLOP/s", "numpy GFLOP/s", "vs numpy", "target")
    targets = {}
    for t in report["targets"]:
        label = (f"ratio>={t['min']:g}" if t["name"] == "ratio" else f"sampler<={t['max']:.0%}")
        targets.setdefault((t["n_local"], t["rate"]), []).append(f"{label} {'PASS' if t['pass'] else 'FAIL'}")
    rows = []
    for r in report["results"]:
        rows.append((f"{r['n_local']:,}", f"{r['rate']:g}", f"{r['sampled']:,}", f"{r['step_s'] * 1e3:.1f}",
                     f"{r['ratio']:.2f}", f"{r['ratio_ceiling']:.1f}", f"{r['sampler_s'] * 1e3:.2f}",
                     f"{r['sampler_share']:.2%}", f"{r['gflops']:.1f}", f"{r['numpy_gflops']:.1f}",
                     f"{r['vs_numpy']:.2f}", "; ".join(targets.get((r["n_local"], r["rate"]), ["-"]))))
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    lines += [_row(head, widths), _row(tuple("-" * w for w in widths), widths)]
    lines += [_row(row, widths) for row in rows]
    lines += [
        "",
        f"ratio = t(r={report['results'][0]['ratio_ref_rate']:g}) / t(r), ceil = S(ref) / S; "
        f"GFLOP/s counts the step's {MATMULS_PER_STEP} matmuls (2*B*S*D flops each) over the whole step; "
        "numpy = one float32 [B,D]x[D,S] matmul.",
        f"wall time {report['wall_s']:.1f} s",
    ]
    return "\n".join(lines) + "\n"


def _row(cells, widths) -> str:
    """Numbers right-aligned; the last (text) column left-aligned."""
    return "  ".join(x.rjust(w) for x, w in zip(cells[:-1], widths)) + "  " + cells[-1]
