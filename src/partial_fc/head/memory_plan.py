"""The memory plan of one rank's head: its shard of the bank, and the working set of one step.

The bank part, bank_bytes(), is the formula `partial-fc bench memory` checks against real banks; the
working set counts the arrays the operator keeps alive at its peak (operator.py), with the row chunks
chosen here, so a change to either shows up in the plan.

    partial-fc memory-plan [--classes 1e8] [--workers 8,64] [--dtypes float32,float16] [--json]
"""
from __future__ import annotations

import argparse
import json

from ..args import list_of, positive_int, rate
from .precision import DTYPES, itemsize
from .sampler import num_sampled
from .sharding import shard_range

# Sampled rows whose [S, D] float32 block stays within this many elements (16 MB) run as one chunk.
DENSE_ELEMENTS = 1 << 22
# Otherwise sampled rows go in chunks of this many elements (4 MB of float32 at any D). Chunk-sized blocks
# stay in the C heap between steps once glibc serves them from it, so their size sets part of the peak:
# at N_local = 1e6, r = 0.1, 16 MB chunks peaked at 1.163x the bank, 4 MB chunks at 1.138x (bench memory,
# both counting the 0.19 GiB MXNet process), at the same step time (bench fc, same idle machine).
CHUNK_ELEMENTS = 1 << 20


def chunk_rows_for(dim: int, bank_dtype: str, sampled: int) -> int:
    """Sampled rows handled at a time: all of them for a float32 bank with S * D <= DENSE_ELEMENTS, else
    CHUNK_ELEMENTS // D (so a compact bank never widens more than one chunk to float32)."""
    if bank_dtype == "float32" and sampled * dim <= DENSE_ELEMENTS:
        return max(1, sampled)
    return max(1, CHUNK_ELEMENTS // dim)


def bank_bytes(count: int, dim: int, dtype: str = "float32") -> int:
    """Analytic bytes of one shard: centers + momentum, [count, dim] each, in the storage dtype."""
    return 2 * int(count) * int(dim) * itemsize(dtype)


# [N, S] float32 arrays alive at once at the operator's peak: the cosines (which the logits and their exp
# overwrite in place) and the transposed logit gradient (operator.py).
LIVE_LOGITS = 2
# float32 [rows, D] arrays alive per chunk of sampled rows: the center gradient (two buffers used in turn),
# the stock projection's temporary, and the chunk's gathered centers and momentum. (A float32 CPU bank's
# native update projects in place and gathers no momentum; the plan keeps the stock operators' count, which
# GPU banks use.)
LIVE_CHUNKS = 5


def memory_plan(num_classes: int, world_size: int, dim: int = 512, dtype: str = "float16",
                sample_rate: float = 0.1, batch: int = 64, chunk_rows: int | None = None) -> dict:
    """Per-rank memory of the Partial FC head for `num_classes` over `world_size` workers (largest shard).

    batch: per-worker batch (the logits are [batch * world_size, S]). chunk_rows: sampled rows processed
    at a time (default: the operator's chunk for this D). Returns bytes and counts; the bank part is
    bank_bytes(), the formula `partial-fc bench memory` checks against a real bank.
    """
    _, n_local = shard_range(num_classes, world_size, 0)
    s = num_sampled(n_local, sample_rate, 0)
    n = batch * world_size
    rows = min(s, chunk_rows or chunk_rows_for(dim, dtype, s))
    centers = n_local * dim * itemsize(dtype)
    logits = n * s * 4
    chunk = rows * dim * 4
    # A float32 device bank gathers the sampled rows once per step into one float32 [S, D] copy.
    kept = s * dim * 4 if dtype == "float32" else 0
    # The sampler keeps one bool per shard row between steps (its scratch mask) and the step's int64 index.
    sampler = n_local + 8 * s
    working = LIVE_LOGITS * logits + kept + LIVE_CHUNKS * chunk + 2 * n * dim * 4 + sampler
    return {
        "num_classes": num_classes, "world_size": world_size, "dim": dim, "dtype": dtype,
        "sample_rate": sample_rate, "batch": batch, "n_local": n_local, "sampled": s, "global_batch": n,
        "centers_bytes": centers, "momentum_bytes": centers, "bank_bytes": bank_bytes(n_local, dim, dtype),
        "logits_bytes": logits, "kept_bytes": kept, "chunk_rows": rows, "chunk_bytes": chunk, "sampler_bytes": sampler,
        "working_bytes": working,
        "total_bytes": bank_bytes(n_local, dim, dtype) + working,
    }


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def format_memory_plan(plans: list[dict]) -> str:
    """A markdown table of memory_plan() rows."""
    lines = ["| classes | W | dtype | rows per rank | centers | momentum | sampled rows S | logits [N,S] fp32 "
             "| working set | total per rank |", "|---|---|---|---|---|---|---|---|---|---|"]
    for p in plans:
        lines.append(f"| {p['num_classes']:.3g} | {p['world_size']} | {p['dtype']} | {p['n_local']:,} "
                     f"| {_gb(p['centers_bytes'])} | {_gb(p['momentum_bytes'])} | {p['sampled']:,} "
                     f"| {_gb(p['logits_bytes'])} | {_gb(p['working_bytes'])} | {_gb(p['total_bytes'])} |")
    return "\n".join(lines) + "\n"


# ---- partial-fc memory-plan ------------------------------------------------------------------------------

DESCRIPTION = ("Per-rank bytes of centers, momentum and the FC working set (the formula of memory_plan.memory_plan; "
               "bench memory checks its bank part against real banks), as a markdown table or --json.")


def _dtype(text: str) -> str:
    """argparse type: a bank storage dtype."""
    if text not in DTYPES:
        raise argparse.ArgumentTypeError(f"unknown dtype {text!r} (known: {', '.join(DTYPES)})")
    return text


def add_arguments(p) -> None:
    # String defaults go through the type like a command-line value, so the help shows them as typed.
    p.add_argument("--classes", type=positive_int, default="1e8", help="total classes (default: %(default)s)")
    p.add_argument("--workers", type=list_of(positive_int), default="8,64", metavar="W[,W...]",
                   help="world sizes (default: %(default)s)")
    p.add_argument("--dtypes", type=list_of(_dtype), default="float32,float16", metavar="DTYPE[,DTYPE...]",
                   help=f"bank storage dtypes, of {', '.join(DTYPES)} (default: %(default)s)")
    p.add_argument("--dim", type=positive_int, default=512, help="embedding size D (default: %(default)s)")
    p.add_argument("--rate", type=rate, default=0.1, help="sample rate r (default: %(default)s)")
    p.add_argument("--batch", type=positive_int, default=64, help="per-worker batch (default: %(default)s)")
    # --json comes from the table's parent args.JSON.


def run(args) -> int:
    """`partial-fc memory-plan`: the rows as a markdown table, or JSON."""
    plans = [memory_plan(args.classes, w, args.dim, d, args.rate, args.batch)
             for w in args.workers for d in args.dtypes]
    print(json.dumps(plans, indent=2) if args.json else format_memory_plan(plans), end="\n" if args.json else "")
    return 0
