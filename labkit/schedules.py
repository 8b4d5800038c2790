"""Learning-rate schedules: transformers' real scheduler objects stepped, the same curves written out, and loss spikes.

A schedule multiplies the peak learning rate by a factor per optimizer step. :func:`trajectory` steps
``transformers.get_scheduler``'s object on a throwaway optimizer and records the rate a trainer would
use at each step; :func:`factor` is each schedule's formula written from its definition, so a test can
hold the two together.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

SCHEDULES = ("constant_with_warmup", "linear", "cosine", "cosine_with_min_lr", "warmup_stable_decay")
"""The schedules this book plots, by transformers' ``lr_scheduler_type`` name."""

MIN_LR_RATE = 0.1
"""``cosine_with_min_lr`` and ``warmup_stable_decay`` end at this fraction of the peak rate (a common choice)."""
DECAY_SHARE = 0.2
"""``warmup_stable_decay`` decays over this share of the steps (the rest after warmup is the stable phase)."""


def scheduler_kwargs(name: str, steps: int, warmup_steps: int) -> dict:
    """What ``transformers.get_scheduler`` needs beyond the step counts for ``name`` (see :data:`MIN_LR_RATE`)."""
    if name == "cosine_with_min_lr":
        return {"min_lr_rate": MIN_LR_RATE}
    if name == "warmup_stable_decay":
        decay = max(1, round(DECAY_SHARE * steps))
        return {"num_decay_steps": decay, "min_lr_ratio": MIN_LR_RATE, "decay_type": "cosine"}  # stable: the rest
    return {}


def _check(name: str, steps: int, warmup_steps: int) -> None:
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; expected one of {', '.join(SCHEDULES)}")
    if steps < 1 or not 0 <= warmup_steps < steps:
        raise ValueError(f"need steps >= 1 and 0 <= warmup_steps < steps; got steps={steps}, warmup_steps={warmup_steps}")


def trajectory(name: str, *, steps: int, warmup_steps: int, learning_rate: float = 1.0) -> list[float]:
    """The learning rate at steps 0 .. steps-1 of transformers' scheduler ``name``, read from a stepped optimizer."""
    from transformers import get_scheduler

    _check(name, steps, warmup_steps)
    # A throwaway one-element optimizer: only its learning rate is read, so it lives on the CPU on any device.
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=learning_rate)
    scheduler = get_scheduler(name, optimizer, num_warmup_steps=warmup_steps, num_training_steps=steps,
                              scheduler_specific_kwargs=scheduler_kwargs(name, steps, warmup_steps))
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def factor(name: str, step: int, *, steps: int, warmup_steps: int) -> float:
    """The multiplier of the peak rate at ``step``, from each schedule's definition: a linear warmup (from 0;
    WSD's from its floor), then constant, a linear or half-cosine decay to 0 or to :data:`MIN_LR_RATE`, or (WSD) a stable phase
    before a half-cosine decay over the last :data:`DECAY_SHARE` of the steps."""
    _check(name, steps, warmup_steps)
    floor = MIN_LR_RATE if name in ("cosine_with_min_lr", "warmup_stable_decay") else 0.0
    if step < warmup_steps:  # WSD's warmup rises from its floor; the others' from zero
        start = floor if name == "warmup_stable_decay" else 0.0
        return start + (1.0 - start) * step / warmup_steps
    if name == "constant_with_warmup":
        return 1.0
    if name == "warmup_stable_decay":
        decay = scheduler_kwargs(name, steps, warmup_steps)["num_decay_steps"]
        decay_start = steps - decay
        if step < decay_start:
            return 1.0
        progress = (step - decay_start) / decay
    else:
        progress = (step - warmup_steps) / (steps - warmup_steps)
    shape = 1.0 - progress if name == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return floor + (1.0 - floor) * shape


def loss_spikes(losses: Sequence[float], *, window: int = 5, ratio: float = 1.5) -> list[int]:
    """Indices where the loss exceeds ``ratio`` times the median of the ``window`` losses before it."""
    if window < 1 or ratio <= 1:
        raise ValueError(f"need window >= 1 and ratio > 1; got window={window}, ratio={ratio}")
    spikes = []
    for i in range(window, len(losses)):
        previous = sorted(losses[i - window:i])
        median = previous[window // 2] if window % 2 else (previous[window // 2 - 1] + previous[window // 2]) / 2
        if losses[i] > ratio * median:
            spikes.append(i)
    return spikes
