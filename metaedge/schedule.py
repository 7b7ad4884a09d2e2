"""The learning-rate schedule of every training stage: cosine decay to 1% of the base rate."""

from __future__ import annotations

import math


def cosine_lr(base: float, step: int, steps: int) -> float:
    """The rate at `step` of `steps`: a pure function of the step, so resuming needs no scheduler state."""
    progress = min(step / max(steps, 1), 1.0)
    return base * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress)))
