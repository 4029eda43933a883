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

The backbone part (--backbones, default mbf, mbf:previous-prelu, r50 and r50:previous-prelu): for each
backbone and each batch of --backbone-batches a child binds the trainer's CPU graph as startup.bind_backbone
does (Module, for training, data without a gradient), runs `steps` training steps (forward, backward with a
random head gradient, SGD update) and reports its VmHWM. Columns:
    peak @B        the child's peak RSS at batch B (everything: MXNet, parameters, optimizer state)
    per image      the slope between the smallest and the largest batch: what one more image of batch costs
    fixed          peak - per image x B at the smallest batch
    plan / image   the same slope of the executor's own memory plan ("Total N MB allocated")
    vs plan        per image / plan per image: what MXNet holds beyond its plan
NET:previous-prelu is NET with the CPU PReLU form of before issue 14 (relu(x) + slope * min(x, 0) with MXNet's
`relu` and `_minimum_scalar`, whose fallback copies of MKLDNN-layout inputs stay outside the plan;
symbols/common.prelu says why), rebuilt here for comparison: the same function and parameters. Target
(pass/fail): mbf's per image <= 0.5 x mbf:previous-prelu's.
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
# Backbones: NETWORK or NETWORK:previous-prelu (the CPU PReLU form before issue 14, for comparison).
PREVIOUS_PRELU = "previous-prelu"
DEFAULT_BACKBONES = ("mbf", "mbf:" + PREVIOUS_PRELU, "r50", "r50:" + PREVIOUS_PRELU)
DEFAULT_BACKBONE_BATCHES = (4, 16)
# Issue 14: mbf's memory per image of batch (fwd + bwd) at most half of what the previous PReLU form holds.
TARGET_BACKBONE = {"network": "mbf", "reference": "mbf:" + PREVIOUS_PRELU, "max_vs_reference": 0.5}
# For skipping what cannot fit (bytes ~ fixed + per image x batch), measured with MXNet 1.9.1 on CPU, rounded up.
BACKBONE_ESTIMATE_GIB = {"mbf": (0.8, 0.14), "r50": (1.6, 0.22)}
BACKBONE_ESTIMATE_OTHER_GIB = (2.0, 0.5)


def bank_dtype(text: str) -> str:
    """argparse type: a storage dtype name."""
    if text not in common.BANK_DTYPES:
        raise argparse.ArgumentTypeError(f"unknown bank dtype {text!r} (known: {', '.join(common.BANK_DTYPES)})")
    return text


def backbone_name(text: str) -> str:
    """argparse type: NETWORK or NETWORK:previous-prelu."""
    import symbols

    network, _, form = text.partition(":")
    if network not in symbols.NETWORKS or form not in ("", PREVIOUS_PRELU):
        raise argparse.ArgumentTypeError(f"unknown backbone {text!r} (known: {', '.join(symbols.NETWORKS)}, "
                                         f"each optionally with :{PREVIOUS_PRELU})")
    return text


def benchmark(n_local=DEFAULT_N_LOCAL, rates=DEFAULT_RATES, dtypes=None, batch=fc.DEFAULT_BATCH, dim=fc.DEFAULT_DIM,
        steps=DEFAULT_STEPS, *, backbones=DEFAULT_BACKBONES, backbone_batches=DEFAULT_BACKBONE_BATCHES, seed=0,
        as_json=False, out=None, log=None) -> dict:
    """Run every point in a child process; print a table (or JSON) to `out`, progress to `log`.

    dtypes None: float32 and float16; n_local empty: no bank points; backbones empty: no backbone rows.
    Returns the report dict.
    """
    out = out or sys.stdout
    log = log or sys.stderr
    n_local = [int(n) for n in n_local]
    rates = [float(r) for r in rates]
    dtypes = list(dict.fromkeys(dtypes or DEFAULT_DTYPES))
    for d in dtypes:
        common.check_bank_dtype(d)
    if (n_local and min(n_local) < 1) or not rates or not all(0.0 < r <= 1.0 for r in rates):
        raise ValueError(f"bad points: n_local={n_local}, rates={rates}")
    if batch < 1 or dim < 1 or steps < 1:
        raise ValueError("batch, dim and steps must be >= 1")
    backbones = list(dict.fromkeys(backbones))
    backbone_batches = sorted({int(b) for b in backbone_batches})
    if backbones and (len(backbone_batches) < 2 or backbone_batches[0] < 1):
        raise common.BenchError(f"--backbone-batches needs two or more batch sizes >= 1, got {backbone_batches}")

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
    backbone_rows = [_backbone(name, backbone_batches, dim, steps, seed, skipped, log) for name in backbones]
    backbone_rows = [r for r in backbone_rows if r is not None]
    report = {
        "benchmark": "memory",
        "machine": common.machine_info(),
        "config": {"n_local": n_local, "rates": rates, "dtypes": dtypes, "batch": batch, "dim": dim,
                   "steps": steps, "seed": seed, "storage": "device", "world_size": 1,
                   "ratio_counts_baseline": True, "backbones": backbones, "backbone_batches": backbone_batches},
        "baseline": baseline,
        "results": rows,
        "backbone": backbone_rows,
        "skipped": skipped,
        "targets": _targets(rows) + _backbone_targets(backbone_rows),
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


def _backbone(name: str, batches: list[int], dim: int, steps: int, seed: int, skipped: list, log) -> dict | None:
    """One backbone row: a child per batch size; the per-image slope between the smallest and largest batch."""
    network, _, form = name.partition(":")
    fixed, per_image = BACKBONE_ESTIMATE_GIB.get(network, BACKBONE_ESTIMATE_OTHER_GIB)
    need, have = int((fixed + per_image * batches[-1]) * common.GIB), common.available_memory()
    if have is not None and need > have:
        message = f"skipped: needs {need / common.GIB:.1f} GiB, {have / common.GIB:.1f} available"
        print(f"bench memory: backbone {name}: {message}", file=log, flush=True)
        skipped.append({"backbone": name, "batch": batches[-1], "needs_bytes": need, "available_bytes": have,
                        "message": message})
        return None
    points = []
    for b in batches:
        print(f"bench memory: backbone {name} batch {b} ({steps} training step(s)) ...", file=log, flush=True)
        points.append({"batch": b, **_child({"mode": "backbone", "network": network, "previous_prelu": bool(form),
                                             "batch": b, "dim": dim, "steps": steps, "seed": seed})})
    lo, hi = points[0], points[-1]
    span = hi["batch"] - lo["batch"]
    per_image = (hi["peak_bytes"] - lo["peak_bytes"]) / span
    plan_per_image = (hi["plan_bytes"] - lo["plan_bytes"]) / span
    return {"backbone": name, "network": network, "prelu": PREVIOUS_PRELU if form else "trainer's CPU form",
            "points": points, "per_image_bytes": per_image, "fixed_bytes": lo["peak_bytes"] - per_image * lo["batch"],
            "plan_per_image_bytes": plan_per_image,
            "vs_plan": per_image / plan_per_image if plan_per_image > 0 else None}


def _backbone_targets(rows: list[dict]) -> list[dict]:
    by_name = {r["backbone"]: r for r in rows}
    got, ref = by_name.get(TARGET_BACKBONE["network"]), by_name.get(TARGET_BACKBONE["reference"])
    if got is None or ref is None or ref["per_image_bytes"] <= 0:
        return []
    value = got["per_image_bytes"] / ref["per_image_bytes"]
    return [{"name": "backbone_per_image_vs_reference", "backbone": got["backbone"], "reference": ref["backbone"],
             "value": value, "max": TARGET_BACKBONE["max_vs_reference"],
             "pass": value <= TARGET_BACKBONE["max_vs_reference"]}]


def _plan_bytes(executor) -> int:
    """The executor's memory plan: the "Total N MB allocated" line of its debug_str."""
    for line in executor.debug_str().splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0] == "Total" and parts[2:] == ["MB", "allocated"]:
            return int(parts[1]) << 20
    raise common.BenchError("the executor's debug_str has no 'Total N MB allocated' line")


def _previous_prelu(x, channels, name, impl="leakyrelu"):
    """symbols.common.prelu as it was before issue 14: its "depthwise" CPU form relu(x) + slope * min(x, 0)
    with MXNet's `relu` and `_minimum_scalar`, non-MKLDNN operators (the same function and parameters)."""
    import mxnet as mx
    from symbols import common as layers

    if impl != "depthwise":
        return layers.prelu(x, channels, name, impl)
    slope = mx.sym.Variable(name + "_gamma", shape=(channels,), init=mx.init.Constant(layers.PRELU_INIT_SLOPE))
    positive = mx.sym.relu(x, name=name + "_pos")
    negative = mx.sym._internal._minimum_scalar(x, scalar=0.0, name=name + "_neg")
    kernel = mx.sym.reshape(slope, shape=(channels, 1, 1, 1), name=name + "_kernel")
    scaled = mx.sym.Convolution(negative, weight=kernel, num_filter=channels, num_group=channels, kernel=(1, 1),
                                no_bias=True, name=name + "_scaled")
    return mx.sym.elemwise_add(positive, scaled, name=name)


def _backbone_main(spec: dict) -> dict:
    """A training Module of the network in the trainer's CPU form, `steps` steps, its VmHWM."""
    import time as clock

    import mxnet as mx
    import numpy as np
    import symbols

    if spec["previous_prelu"]:
        # For comparison only (this child ends after the measurement): every network module builds its PReLU
        # with the name `prelu` it imported from symbols.common.
        for module in list(sys.modules.values()):
            if getattr(module, "__name__", "").startswith("symbols.") and hasattr(module, "prelu"):
                module.prelu = _previous_prelu
    batch = spec["batch"]
    sym = symbols.get_symbol(spec["network"], embedding_size=spec["dim"], prelu_impl="depthwise")
    mod = mx.mod.Module(sym, data_names=["data"], label_names=None, context=mx.cpu())
    mod.bind(data_shapes=[("data", (batch, 3, 112, 112))], for_training=True)  # as startup.bind_backbone
    mx.random.seed(spec["seed"])
    mod.init_params(initializer=mx.init.Xavier(rnd_type="gaussian", factor_type="out", magnitude=2))
    mod.init_optimizer(optimizer="sgd", optimizer_params={"learning_rate": 0.01, "momentum": 0.9, "wd": 5e-4})
    rng = np.random.default_rng(spec["seed"])
    images = mx.nd.array(rng.uniform(0, 255, (batch, 3, 112, 112)).astype(np.float32))
    head_grad = mx.nd.array(rng.standard_normal((batch, spec["dim"])).astype(np.float32) * 0.01)
    step_s = []
    for _ in range(spec["steps"]):
        t0 = clock.perf_counter()
        mod.forward(mx.io.DataBatch([images]), is_train=True)
        mod.backward(out_grads=[head_grad])
        mod.update()
        mx.nd.waitall()
        step_s.append(clock.perf_counter() - t0)
    return {"peak_bytes": _status_bytes("VmHWM"), "rss_bytes": _status_bytes("VmRSS"),
            "plan_bytes": _plan_bytes(mod._exec_group.execs[0]), "step_s": step_s}


def _child_main(spec: dict) -> dict:
    if spec["mode"] == "backbone":
        return _backbone_main(spec)
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
                f"{label[t['name']]}<={t['max']:g} {'PASS' if t['pass'] else 'FAIL'}" for t in report["targets"]
                if t["name"] in label}
    head = ("N_local", "r", "dtype", "analytic GiB", "peak GiB", "peak-base GiB", "ratio", "net ratio",
            "create peak", "steps peak", "vs float32", "target")
    rows = [(f"{r['n_local']:,}", f"{r['rate']:g}", r["dtype"], _gib(r["analytic_bytes"]), _gib(r["peak_bytes"]),
             _gib(r["net_bytes"]), f"{r['ratio']:.3f}", f"{r['net_ratio']:.3f}", _gib(r["create_peak_bytes"]),
             _gib(r["steps_peak_bytes"]), "-" if r["vs_float32"] is None else f"{r['vs_float32']:.3f}",
             verdicts.get((r["n_local"], r["rate"], r["dtype"]), "-")) for r in report["results"]]
    if rows:
        lines += common.table(head, rows)
    lines += [f"N_local={s['n_local']:,} r={s['rate']:g} {s['dtype']}: {s['message']}" for s in report["skipped"]
              if "backbone" not in s]
    if report["results"]:
        lines += [
            "",
            "analytic = centers + momentum (memory_plan.bank_bytes); ratio = peak / analytic and COUNTS the "
            "baseline; net ratio = (peak - baseline) / analytic;",
            "create peak = peak RSS up to the bank's creation; steps peak = peak RSS during the FC steps "
            "(VmHWM reset in between).",
        ]
    lines += _backbone_lines(report)
    lines += [f"wall time {report['wall_s']:.1f} s"]
    return "\n".join(lines) + "\n"


def _backbone_lines(report: dict) -> list[str]:
    rows, c = report.get("backbone") or [], report["config"]
    skipped = [s for s in report["skipped"] if "backbone" in s]
    if not rows and not skipped:
        return []
    verdicts = {t["backbone"]: f"<= {t['max']:g} x {t['reference']} ({t['value']:.2f}) "
                               f"{'PASS' if t['pass'] else 'FAIL'}"
                for t in report["targets"] if t["name"] == "backbone_per_image_vs_reference"}
    batches = c["backbone_batches"]
    head = ("backbone", *(f"peak @{b} GiB" for b in batches), "per image GiB", "fixed GiB", "plan/image GiB",
            "vs plan", "target")
    table_rows = [(r["backbone"], *(_gib(p["peak_bytes"]) for p in r["points"]), _gib(r["per_image_bytes"]),
                   _gib(r["fixed_bytes"]), _gib(r["plan_per_image_bytes"]),
                   "n/a" if r["vs_plan"] is None else f"{r['vs_plan']:.2f}", verdicts.get(r["backbone"], "-"))
                  for r in rows]
    lines = ["", f"backbone memory of training (fwd + bwd + SGD update, {c['steps']} step(s), D={c['dim']}, "
                 f"the trainer's CPU graph; peak RSS = VmHWM of a child per batch):"]
    if table_rows:
        lines += common.table(head, table_rows)
    lines += [f"backbone {s['backbone']}: {s['message']}" for s in skipped]
    lines += ["per image = (peak at the largest batch - peak at the smallest) / their difference; plan/image = the "
              "same slope of the executor's memory plan;",
              "NET:previous-prelu = NET with the CPU PReLU form before issue 14 (same function and parameters)."]
    return lines


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
               "momentum and the resident memory of a process that only imported mxnet. Then, for each backbone, "
               "the peak memory of a few training steps at two or more batch sizes: its memory per image of "
               "batch (fwd + bwd) against the executor's memory plan.")


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
                        help="FC steps (and backbone training steps) each child runs (default: %(default)s)")
    parser.add_argument("--backbones", type=list_of(backbone_name), default=list(DEFAULT_BACKBONES),
                        metavar="NET[,NET...]",
                        help="backbones whose training memory per image of batch is measured; NET:previous-prelu is "
                             "NET with the PReLU form before issue 14 (default: %(default)s)")
    parser.add_argument("--backbone-batches", type=list_of(positive_int), default=list(DEFAULT_BACKBONE_BATCHES),
                        metavar="B,B[,B...]", help="batch sizes of the backbone rows (default: %(default)s)")
    parser.add_argument("--no-bank", action="store_true", help="only the backbone rows")
    parser.add_argument("--no-backbone", action="store_true", help="only the bank rows")


def run(args) -> int:
    benchmark(n_local=[] if args.no_bank else args.n_local, rates=args.rates, dtypes=args.dtypes, batch=args.batch,
              dim=args.dim, steps=args.steps, backbones=[] if args.no_backbone else args.backbones,
              backbone_batches=args.backbone_batches, as_json=args.json)
    return 0


if __name__ == "__main__":  # a measuring child (see _child)
    print(json.dumps(_child_main(json.loads(sys.argv[1]))))
