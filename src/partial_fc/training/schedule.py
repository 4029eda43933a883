"""Learning-rate schedule: step decay with an optional linear warmup, a pure function of the step.

Being a function of the step (not of an optimizer's internal update counter) is what lets a resumed run
use exactly the learning rates the uninterrupted run would have used.
"""
from __future__ import annotations

import bisect


def learning_rate(step: int, base: float, lr_steps: list[int], warmup_steps: int = 0, factor: float = 0.1) -> float:
    """lr of the update made at `step` (0-based): base * factor^(number of lr_steps <= step),
    ramped linearly from base/warmup_steps up to base over the first warmup_steps updates."""
    lr = base * factor ** bisect.bisect_right(lr_steps, step)
    if step < warmup_steps:
        lr *= (step + 1) / warmup_steps
    return lr


def scaled_base(lr: float, global_batch: int, reference_batch: int = 512) -> float:
    """The linear scaling rule: PFC_LR is the rate for a global batch of 512."""
    return lr * global_batch / reference_batch
