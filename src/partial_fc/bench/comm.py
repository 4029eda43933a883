"""`partial-fc bench comm`: microseconds per collective of the Partial FC operator, against the zero-padded
allreduce the reference trainer used in place of an allgather, and the communication share of the FC step.

Run one process per rank under a launcher; rank 0 prints:
    horovodrun -np 2 -H localhost:2 --gloo partial-fc bench comm
(any world size works; PFC_COMM=mpi under mpirun times the mpi4py transport). Every collective goes through
dist.py with the operator's shapes at global batch N = B_global (each rank holds B = B_global // W rows, so N
is rounded down to a multiple of W), embedding size D:
    allgather features   float32 [B, D] -> [N, D]          (pfc.features)
    allgather labels     int64 [B] -> [N]                  (pfc.labels)
    allreduce Max        float32 [N]                       (pfc.logits_max)
    allreduce Sum        float32 [2, N], packed row sums and target logits (pfc.sum_exp_target)
    reduce-scatter       float32 [N, D] -> [B, D]          (pfc.feature_grad)
    emulated allgather   zero-filled float32 [N, D] with this rank's B rows written in, then allreduce Sum:
                         the reference's allgather; the buffer's fill and copy are timed with it (it pays them)
Each call is timed on its own after a barrier (so every rank starts it together), from the call until its
result is readable; per collective 3 warm-ups, then `repeat` timed calls; per rank the mean and the median,
then the largest over the ranks (a collective is as slow as its slowest rank). ratio = emulated / real
allgather of the features, on the means; the ratio of the medians is shown beside it. The mean is judged
because a small collective's time per call is bimodal, one Horovod background cycle (about 1 ms) or several:
at B_global = 128 over two ranks about half of the emulation's calls took 1.2-1.5 ms and most others 4-7 ms,
so its median fell anywhere between the modes from run to run (1.6 to 4.4 ms), while the mean is what a
training step pays per call on average. Once per size the emulation's result is checked against the real
allgather.

The FC step's communication share: the operator (num_classes = fc_n_local x W, so N_local = fc_n_local, at
fc_rate, B = 128 // W per rank) is timed with PartialFC.clock under the same launch, twice: plainly, and with
the ranks lined up by a barrier before each collective (LinedUpClock). transfer_share = the lined-up "exchange" +
"scatter" phases (the collectives alone) / the plain phased step; share = the plain "exchange" + "scatter" phases
(which also hold each rank's wait for the slowest one) / the plain phased step. Medians over fc_repeat steps
after one warm-up, the largest over the ranks. The target is judged on transfer_share; both are printed. It runs
only when W banks and their working sets fit in rank 0's MemAvailable (the ranks are assumed to share one
machine); otherwise it is reported n/a.
Targets of the issue (shown with pass/fail, never asserted): the real allgather >= 1.6x faster than the
emulation at N x D >= 128 x 512 float32; FC communication <= 5 % of the FC step at N_local = 1e6.
"""
from __future__ import annotations

import contextlib
import statistics
import sys
import time

import mxnet as mx
import numpy as np

from .. import config, dist
from ..head.margin import Margin
from ..head.operator import PartialFC
from ..args import list_of, positive_int, rate
from . import common, fc

DEFAULT_BATCHES = (128, 1024, 8192)
DEFAULT_REPEAT = 50
DEFAULT_FC_N_LOCAL, DEFAULT_FC_RATE, FC_BATCH = 1_000_000, 0.1, 128
WARMUP = 3
COLLECTIVES = ("allgather features", "allgather labels", "allreduce max", "allreduce sum packed",
               "reducescatter", "emulated allgather")
COMM_PHASES = ("exchange", "scatter")
TARGET_ALLGATHER = {"min_elements": 128 * 512, "min_ratio": 1.6}
TARGET_SHARE = {"n_local": 1_000_000, "max_share": 0.05}


def benchmark(batches=DEFAULT_BATCHES, dim=fc.DEFAULT_DIM, repeat=DEFAULT_REPEAT, fc_n_local=DEFAULT_FC_N_LOCAL,
        fc_rate=DEFAULT_FC_RATE, fc_repeat=fc.DEFAULT_REPEAT, *, step=True, bank_dtype="float32", comm=None,
        seed=0, as_json=False, out=None, log=None) -> dict:
    """Time the collectives on every rank; rank 0 prints the table (or JSON). Returns the report on every rank.

    comm: a dist communicator (default: dist.init of PFC_COMM, Horovod unless set). step=False skips the FC step.
    """
    out = out or sys.stdout
    log = log or sys.stderr
    batches = [int(b) for b in batches]
    if not batches or min(batches) < 1 or dim < 1 or repeat < 1 or fc_n_local < 1 or fc_repeat < 1:
        raise ValueError("batches, dim, repeat, fc_n_local and fc_repeat must be >= 1")
    common.check_bank_dtype(bank_dtype)
    comm = comm or dist.init(config.load().comm)
    world = comm.size
    if min(batches) < world:
        raise common.BenchError(f"global batch {min(batches)} is smaller than the world size {world}")
    say = (lambda msg: print(msg, file=log, flush=True)) if comm.rank == 0 else (lambda msg: None)

    t_start = time.perf_counter()
    rows = []
    for b_global in batches:
        say(f"bench comm: B_global={b_global}: timing {len(COLLECTIVES)} collectives x {repeat} calls ...")
        rows.append(_bench_size(comm, b_global // world, dim, repeat, seed))
    step_report = _fc_share(comm, fc_n_local, dim, fc_rate, fc_repeat, seed, bank_dtype, say) if step else None
    report = {
        "benchmark": "comm",
        "machine": common.machine_info(),
        "config": {"world_size": world, "transport": comm.transport, "batches": batches, "dim": dim,
                   "repeat": repeat, "warmup": WARMUP, "fc_n_local": fc_n_local, "fc_rate": fc_rate,
                   "fc_repeat": fc_repeat, "fc_batch_per_rank": FC_BATCH // world, "step": step,
                   "bank_dtype": bank_dtype, "seed": seed},
        "results": rows,
        "fc_step": step_report,
        "targets": _targets(rows, step_report),
        "wall_s": time.perf_counter() - t_start,
    }
    if comm.rank == 0:
        common.emit(report, format_table, as_json, out)
    return report


def _bench_size(comm, b: int, dim: int, repeat: int, seed: int) -> dict:
    rank, world = comm.rank, comm.size
    n = b * world
    rng = np.random.default_rng([seed, rank])
    features = mx.nd.array(rng.standard_normal((b, dim), dtype=np.float32))
    labels = mx.nd.array(rng.integers(0, 2**40, size=b, dtype=np.int64), dtype=np.int64)
    row_max = mx.nd.array(rng.standard_normal(n, dtype=np.float32))
    packed = mx.nd.array(rng.standard_normal((2, n), dtype=np.float32))
    grads = mx.nd.array(rng.standard_normal((n, dim), dtype=np.float32))

    def emulated():
        padded = mx.nd.zeros((n, dim))
        padded[rank * b:(rank + 1) * b] = features
        return comm.allreduce(padded, "sum", "bench.padded_features")

    calls = {
        "allgather features": lambda: comm.allgather(features, "bench.features"),
        "allgather labels": lambda: comm.allgather(labels, "bench.labels"),
        "allreduce max": lambda: comm.allreduce(row_max, "max", "bench.logits_max"),
        "allreduce sum packed": lambda: comm.allreduce(packed, "sum", "bench.sum_exp_target"),
        "reducescatter": lambda: comm.reducescatter(grads, "bench.feature_grad"),
        "emulated allgather": emulated,
    }
    matches = np.array_equal(calls["allgather features"]().asnumpy(), emulated().asnumpy())
    times = _time_collectives(comm, [calls[k] for k in COLLECTIVES], repeat)
    stats = [statistics.fmean(t) for t in times] + [statistics.median(t) for t in times]
    # A collective is as slow as its slowest rank: take the largest mean and median over the ranks.
    slowest = comm.allreduce(mx.nd.array(stats, dtype=np.float64), "max", "bench.stats").asnumpy()
    us = {k: float(v) * 1e6 for k, v in zip(COLLECTIVES, slowest[:len(COLLECTIVES)])}
    us_median = {k: float(v) * 1e6 for k, v in zip(COLLECTIVES, slowest[len(COLLECTIVES):])}
    return {"b_global": n, "b_per_rank": b, "dim": dim, "features_elements": n * dim, "us": us,
            "us_median": us_median, "ratio": us["emulated allgather"] / us["allgather features"],
            "ratio_median": us_median["emulated allgather"] / us_median["allgather features"],
            "emulation_matches": bool(matches)}


def _time_collectives(comm, fns, repeat: int) -> list[list[float]]:
    """Seconds per call of each of `fns`: WARMUP calls, then `repeat` timed calls, each after a barrier."""
    times = []
    for fn in fns:
        for _ in range(WARMUP):
            fn().wait_to_read()
        t = []
        for _ in range(repeat):
            comm.barrier("bench.barrier")
            t0 = time.perf_counter()
            fn().wait_to_read()
            t.append(time.perf_counter() - t0)
        times.append(t)
    return times


def _fc_share(comm, n_local, dim, rate, repeat, seed, bank_dtype, say) -> dict:
    world = comm.size
    b = max(1, FC_BATCH // world)
    need = fc.step_bytes(n_local, dim, [rate], b * world, bank_dtype) * world
    have = common.available_memory()
    fits = have is None or need <= have
    # Rank 0 decides for everyone: every rank must run the step's collectives, or none.
    fits = bool(comm.broadcast(mx.nd.array([1 if fits else 0], dtype=np.int32), 0, "bench.fits").asscalar())
    if not fits:
        message = f"skipped: {world} ranks need {need / common.GIB:.1f} GiB, {have / common.GIB:.1f} available"
        say(f"bench comm: FC step at N_local={n_local}: {message}")
        return {"n_local": n_local, "rate": rate, "skipped": message}
    say(f"bench comm: timing the FC step at N_local={n_local} r={rate:g} ({world} ranks, {bank_dtype} bank) ...")
    rng = np.random.default_rng([seed, comm.rank, 1])
    op = PartialFC(comm, n_local * world, dim, Margin(s=64, m1=1, m2=0.5, m3=0), rate, seed=seed, ctx=mx.cpu(),
                   bank=_rank_bank(comm, n_local * world, dim, seed, bank_dtype))
    features = mx.nd.array(rng.standard_normal((b, dim), dtype=np.float32))
    labels = rng.integers(0, n_local * world, size=b, dtype=np.int64)
    comm.barrier("bench.barrier")
    steps = [fc.time_phased_step(op, features, labels, step) for step in range(repeat + 1)][1:]
    lined = [fc.time_phased_step(op, features, labels, repeat + 1 + step, LinedUpClock(comm))
             for step in range(repeat + 1)][1:]
    comm_of = lambda s: sum(s.get(p, 0.0) for p in COMM_PHASES)  # noqa: E731
    shares = [comm_of(s) / s["total"] for s in steps]
    # The denominator is the real step (no barriers); the numerator the collectives with the ranks lined up.
    step_s = statistics.median(s["total"] for s in steps)
    transfer_s = statistics.median(comm_of(s) for s in lined)
    phases = fc.median_phases(steps)
    mine = np.array([statistics.median(shares), step_s, transfer_s / step_s], dtype=np.float64)
    slowest = comm.allreduce(mx.nd.array(mine, dtype=np.float64), "max", "bench.fc_share").asnumpy()
    del op
    mx.nd.waitall()
    return {"n_local": n_local, "rate": rate, "b_per_rank": b, "share": float(slowest[0]),
            "phased_step_s": float(slowest[1]), "phases_s": phases,
            "comm_s": comm_of(phases),
            "transfer_share": float(slowest[2]), "lined_up_phases_s": fc.median_phases(lined), "skipped": None}


class LinedUpClock(fc.PhaseClock):
    """A PhaseClock that lines the ranks up (a barrier, charged to "wait") before each collective of the step.

    In a step, a rank reaches a collective and then waits there for the slowest rank (two single-threaded
    ranks sharing two cores drift apart by tens of ms a step); timed plainly, that wait lands in the
    "exchange" phases. Every collective of the operator runs in an "exchange" or "scatter" phase, so a barrier
    as each of those begins makes them time the collectives alone.
    """

    COLLECTIVE_PHASES = ("exchange", "scatter")

    def __init__(self, comm):
        super().__init__()
        self.comm = comm

    @contextlib.contextmanager
    def phase(self, name: str):
        if name in self.COLLECTIVE_PHASES:
            mx.nd.waitall()
            t0 = time.perf_counter()
            self.comm.barrier("bench.line_up")  # returns once every rank reached it
            self.phases["wait"] = self.phases.get("wait", 0.0) + time.perf_counter() - t0
        with super().phase(name):
            yield


def _rank_bank(comm, num_classes, dim, seed, bank_dtype):
    from ..head.sharding import shard_range

    return fc.make_bank(shard_range(num_classes, comm.size, comm.rank)[1], dim, seed, bank_dtype)


def _targets(rows: list[dict], step_report: dict | None) -> list[dict]:
    out = []
    for row in rows:
        if row["features_elements"] >= TARGET_ALLGATHER["min_elements"]:
            out.append({"name": "allgather_ratio", "b_global": row["b_global"], "value": row["ratio"],
                        "min": TARGET_ALLGATHER["min_ratio"], "pass": row["ratio"] >= TARGET_ALLGATHER["min_ratio"]})
    if step_report is not None and step_report["n_local"] == TARGET_SHARE["n_local"]:
        share = step_report.get("transfer_share")
        out.append({"name": "comm_share", "n_local": step_report["n_local"], "value": share,
                    "max": TARGET_SHARE["max_share"],
                    "pass": None if share is None else share <= TARGET_SHARE["max_share"]})
    return out


def format_table(report: dict) -> str:
    c = report["config"]
    lines = [
        f"partial-fc bench comm: us per collective (mean of {c['repeat']} calls after {c['warmup']} warm-ups, the "
        f"slowest rank's), {c['world_size']} ranks over {c['transport']}, D={c['dim']}",
        *common.machine_lines(report["machine"]),
    ]
    if c["world_size"] == 1:
        lines.append("world size 1: nothing is communicated; run under horovodrun -np 2 -H localhost:2 --gloo")
    lines.append("")
    verdicts = {t["b_global"]: f"ratio>={t['min']:g} {'PASS' if t['pass'] else 'FAIL'}"
                for t in report["targets"] if t["name"] == "allgather_ratio"}
    head = ("B_global", "B/rank", "allgather F", "allgather Y", "Max [N]", "Sum [2,N]", "reduce-scatter",
            "emulated", "ratio", "medians", "target")
    rows = [(f"{r['b_global']:,}", f"{r['b_per_rank']:,}", *(f"{r['us'][k]:.0f}" for k in COLLECTIVES),
             f"{r['ratio']:.2f}" + ("" if r["emulation_matches"] else " (MISMATCH)"),
             f"{r['us_median']['allgather features']:.0f} / {r['us_median']['emulated allgather']:.0f} = "
             f"{r['ratio_median']:.2f}", verdicts.get(r["b_global"], "-")) for r in report["results"]]
    lines += common.table(head, rows)
    lines += ["", "ratio = emulated allgather (allreduce Sum of a zero-padded [N, D] buffer, fill included) / "
                  "real allgather of the features, on the mean us per call (judged: a small collective's time "
                  "per call is bimodal, one Horovod cycle or several, and its median jumps between the modes); "
                  "medians = real / emulated median us and their ratio."]
    s = report["fc_step"]
    if s is not None:
        lines.append("")
        if s["skipped"]:
            lines.append(f"FC step at N_local={s['n_local']:,} r={s['rate']:g}: {s['skipped']}; "
                         "communication share n/a")
        else:
            target = next((t for t in report["targets"] if t["name"] == "comm_share"), None)
            verdict = "" if target is None else f"  target <={target['max']:.0%} {'PASS' if target['pass'] else 'FAIL'}"
            phases = ", ".join(f"{k} {v * 1e3:.1f}" for k, v in s["phases_s"].items())
            lines += [
                f"FC step at N_local={s['n_local']:,} r={s['rate']:g}, B={s['b_per_rank']}/rank, bank "
                f"{c['bank_dtype']}: phased step {s['phased_step_s'] * 1e3:.1f} ms (slowest rank)",
                f"  phases (ms, rank 0): {phases}",
                f"  communication (exchange + scatter) share of the step, ranks lined up before each collective "
                f"(the collectives alone): {s['transfer_share']:.2%} (slowest rank){verdict}",
                f"  the same timed plainly, including the wait for the slower rank at each collective: "
                f"{s['share']:.2%} (slowest rank)",
                f"  lined-up phases (ms, rank 0): "
                + ", ".join(f"{k} {v * 1e3:.1f}" for k, v in s["lined_up_phases_s"].items()),
            ]
    lines.append(f"wall time {report['wall_s']:.1f} s")
    return "\n".join(lines) + "\n"


DESCRIPTION = ("Microseconds per collective the operator uses (allgather of features and labels, Max, packed Sum, "
               "reduce-scatter) against the zero-padded allreduce that emulates an allgather, and the FC step's "
               "communication share. Run one process per rank: horovodrun -np 2 -H localhost:2 --gloo partial-fc "
               "bench comm. Rank 0 prints.")


def add_arguments(parser) -> None:
    parser.add_argument("--batch", type=list_of(positive_int), default=list(DEFAULT_BATCHES), metavar="B[,B...]",
                        help="global batch sizes B_global (default: %(default)s)")
    common.add_dim(parser)
    parser.add_argument("--repeat", type=positive_int, default=DEFAULT_REPEAT,
                        help="timed calls per collective, after warm-up (default: %(default)s)")
    parser.add_argument("--fc-n-local", type=positive_int, default=DEFAULT_FC_N_LOCAL,
                        help="classes per rank of the FC step whose communication share is measured "
                             "(default: %(default)s)")
    parser.add_argument("--fc-rate", type=rate, default=DEFAULT_FC_RATE, help="its sample rate (default: %(default)s)")
    parser.add_argument("--fc-repeat", type=positive_int, default=fc.DEFAULT_REPEAT,
                        help="its timed steps (default: %(default)s)")
    parser.add_argument("--no-step", dest="step", action="store_false", help="time the collectives only")
    common.add_bank_dtype(parser, "the FC step's bank")


def run(args) -> int:
    benchmark(batches=args.batch, dim=args.dim, repeat=args.repeat, fc_n_local=args.fc_n_local,
              fc_rate=args.fc_rate, fc_repeat=args.fc_repeat, step=args.step, bank_dtype=args.bank_dtype,
              as_json=args.json)
    return 0
