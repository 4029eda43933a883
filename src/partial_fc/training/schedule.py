"""Learning-rate schedules, each a pure function of the step: step decay, or polynomial decay, both after an
optional linear warmup.

Being a function of the step (not of an optimizer's internal update counter) is what lets a resumed run
use exactly the learning rates the uninterrupted run would have used.

    step   base * factor^(number of lr_steps <= step)                       (the MXNet trainers)
    poly   base * (1 - (step - warmup) / (total - warmup))^power            (arcface_torch's PolyScheduler)

The warmup ramps linearly from base/warmup_steps up to base over the first warmup_steps updates (the
first update already moves, unlike a ramp from 0).
"""
from __future__ import annotations

import bisect

SCHEDULES = ("step", "poly")


def learning_rate(step: int, base: float, lr_steps: list[int], warmup_steps: int = 0, factor: float = 0.1) -> float:
    """lr of the update made at `step` (0-based): base * factor^(number of lr_steps <= step),
    ramped linearly from base/warmup_steps up to base over the first warmup_steps updates."""
    lr = base * factor ** bisect.bisect_right(lr_steps, step)
    if step < warmup_steps:
        lr *= (step + 1) / warmup_steps
    return lr


def poly_learning_rate(step: int, base: float, total_steps: int, warmup_steps: int = 0, power: float = 2.0) -> float:
    """lr of the update made at `step` (0-based) under polynomial decay to 0 at `total_steps`, after the
    same linear warmup as learning_rate(). The last update (total_steps - 1) still has a positive rate."""
    if step < warmup_steps:
        return base * (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    return base * max(1.0 - (step - warmup_steps) / span, 0.0) ** power


def scheduled(cfg, step: int, base: float) -> float:
    """The rate of `cfg`'s schedule (PFC_LR_SCHEDULE, PFC_LR_STEPS, PFC_WARMUP_STEPS, PFC_LR_POWER) at `step`
    for a base rate `base` (the backbone's or the centers', already scaled to the global batch)."""
    if cfg.lr_schedule == "poly":
        return poly_learning_rate(step, base, cfg.total_steps, cfg.warmup_steps, cfg.lr_power)
    return learning_rate(step, base, cfg.lr_step_list, cfg.warmup_steps)


def scaled_base(lr: float, global_batch: int, reference_batch: int = 512) -> float:
    """The linear scaling rule: PFC_LR is the rate for a global batch of 512."""
    return lr * global_batch / reference_batch
