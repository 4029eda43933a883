"""Dynamic loss scaling for the fp16 trunk (a pure state machine; the trainer applies it).

The head's feature gradients are multiplied by `scale` before the backbone's backward so small fp16
gradients do not flush to zero; the optimizer divides by it again. A step whose gradients overflowed on
any rank is skipped everywhere (no backbone or center update) and the scale halves; after `window`
good steps in a row it doubles, up to `max_scale`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class LossScaler:
    scale: float = 2.0 ** 16
    window: int = 2000
    min_scale: float = 1.0
    max_scale: float = 2.0 ** 24
    good_steps: int = 0
    skipped: int = 0

    def update(self, overflow: bool) -> bool:
        """Record one step; returns True when the step must be applied, False when it must be skipped."""
        if overflow:
            self.scale = max(self.scale / 2, self.min_scale)
            self.good_steps = 0
            self.skipped += 1
            return False
        self.good_steps += 1
        if self.good_steps >= self.window:
            self.scale = min(self.scale * 2, self.max_scale)
            self.good_steps = 0
        return True

    def state(self) -> dict:
        return asdict(self)
