"""What every training recipe shares: the learning-rate schedule, the weight average, the step count.

Learning rate (linear warm-up, then cosine decay; SGDR, Loshchilov & Hutter 2017):

    lr(s) = peak (s + 1) / warmup                                          s < warmup
    lr(s) = floor + (peak - floor) (1 + cos(pi (s - warmup) / (S - warmup))) / 2      otherwise

warmup = 0 is a plain cosine decay, floor = peak a constant rate.

Exponential moving average of the weights (Polyak averaging), which is what the flow and video recipes
sample from: theta_ema <- decay theta_ema + (1 - decay) theta after every optimiser step. A decay of
0.995 averages about the last 1 / (1 - 0.995) = 200 steps.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn


def check_steps(steps) -> int:
    """A recipe's number of optimiser steps: an int >= 1 (0 would train nothing and save the initial weights)."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    return steps


def warmup_cosine(step: int, steps: int, peak: float, warmup: int = 0, floor: float = 0.0) -> float:
    """The learning rate at `step` of `steps` (see the module docstring)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * progress))


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


class EMA:
    """An exponential moving average of a model's weights: `ema.model` is a frozen copy, `update(model)`
    moves it toward the current weights (buffers are copied)."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay!r}")
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for avg, p in zip(self.model.parameters(), model.parameters(), strict=True):
            avg.lerp_(p, 1 - self.decay)
        for avg, b in zip(self.model.buffers(), model.buffers(), strict=True):
            avg.copy_(b)
