"""The Partial FC head alone, on synthetic embeddings: a quick look at the operator under a launcher.

Each identity c has a fixed prototype embedding; a sample of c is its prototype plus noise. Only the head
learns: the class centers (memory bank, sparse SGD on sampled rows). Every rank draws its own batch, runs
the distributed step, and rank 0 prints the global mean loss per step, which falls as the centers align
with the prototypes. Run it alone with `partial-fc demo`, or one process per worker under a launcher:
`horovodrun -np 2 -H localhost:2 --gloo partial-fc demo` (settings from PFC_*, as for the trainer).
"""
from __future__ import annotations

import time

import mxnet as mx
import numpy as np

from .. import config, dist
from ..args import positive_int
from ..config import Config
from ..head.margin import Margin
from ..head.operator import PartialFC


DESCRIPTION = ("The Partial FC head on synthetic identity embeddings, settings from PFC_* (see config.sh); prints "
               "the global loss per step on rank 0.")


def train_head(cfg: Config, steps: int = 0, noise: float = 0.5) -> list[float]:
    """Train the head alone for `steps` steps (0: cfg.max_steps or 50) on prototypes plus `noise` (std of the
    per-sample Gaussian, the prototypes' entries being standard normal); returns the global loss per step."""
    comm = dist.init(cfg.comm)
    steps = steps or cfg.max_steps or 50
    # Every rank holds the same prototypes (same seed), so samples of one identity agree across ranks.
    protos = np.random.default_rng([cfg.seed, 0x70]).standard_normal((cfg.num_classes, cfg.embedding_size),
                                                                      dtype=np.float32)
    op = PartialFC(comm, cfg.num_classes, cfg.embedding_size, Margin(cfg.margin_s, *cfg.margins),
                   cfg.sample_rate, seed=cfg.seed, storage=cfg.memory_bank, momentum=cfg.momentum,
                   wd=cfg.weight_decay)
    if comm.rank == 0:
        print(f"Partial FC head demo: {comm.size} worker(s) via {comm.transport}, {cfg.num_classes} classes "
              f"(this rank: {op.count} from {op.start}), D={cfg.embedding_size}, r={cfg.sample_rate}, "
              f"loss={cfg.loss} s={cfg.margin_s} m={cfg.margins}, batch {cfg.batch_size}/worker", flush=True)
    losses, t0 = [], time.perf_counter()
    for step in range(steps):
        rng = np.random.default_rng([cfg.seed, comm.rank, step])
        labels = rng.integers(0, cfg.num_classes, size=cfg.batch_size, dtype=np.int64)
        feats = protos[labels] + noise * rng.standard_normal((cfg.batch_size, cfg.embedding_size), dtype=np.float32)
        out = op.forward_backward(mx.nd.array(feats), labels, step)
        op.update(out, cfg.memory_bank_lr)
        losses.append(out.loss)
        if comm.rank == 0 and (step % max(1, steps // 25) == 0 or step == steps - 1):
            rate = (step + 1) * cfg.batch_size * comm.size / (time.perf_counter() - t0)
            print(f"step {step:5d}  loss {out.loss:8.4f}  sampled {out.sample.index.size}/{op.count} centers  "
                  f"{rate:8.0f} samples/s", flush=True)
    if comm.rank == 0:
        head, tail = np.mean(losses[:5]), np.mean(losses[-5:])
        print(f"loss {head:.4f} -> {tail:.4f} over {steps} steps ({'fell' if tail < head else 'DID NOT FALL'})",
              flush=True)
    return losses


def add_arguments(p) -> None:
    p.add_argument("--steps", type=positive_int, default=None, help="steps to run (default: PFC_MAX_STEPS or 50)")


def run(args) -> int:
    """`partial-fc demo`: exit 1 when no step ran."""
    return 0 if train_head(config.load(), steps=args.steps or 0) else 1
