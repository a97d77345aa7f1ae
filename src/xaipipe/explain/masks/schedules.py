"""Learning-rate and regulariser schedules over the iterations, and the gradient normalisation
of the StartGrad repository (``BuelentUendes/StartGrad``), in closed form."""
from __future__ import annotations

import math

import torch

from .params import LAMBDA_SCHEDULES, LR_SCHEDULES


def lr_at(step: int, lr: float, schedule: str, steps: int, gamma: float,
          step_size: int) -> float:
    """The learning rate of iteration ``step`` (0-based) under ``schedule``, in closed form:
    what torch's CosineAnnealingLR(T_max=steps, eta_min=0), StepLR(step_size, gamma) and
    ExponentialLR(gamma) give when stepped once per iteration after the optimiser's step."""
    if schedule == "constant":
        return lr
    if schedule == "cosine":
        return lr * (1.0 + math.cos(math.pi * step / max(steps, 1))) / 2.0
    if schedule == "step":
        return lr * gamma ** (step // step_size)
    if schedule == "exponential":
        return lr * gamma ** step
    raise ValueError(f"lr_schedule {schedule!r}: not one of {LR_SCHEDULES}")


def lambda_factor(step: int, schedule: str, delta: float) -> float:
    """The regularisers' weight factor at iteration ``step`` (0-based): 1, or δ^(1/t) with
    t = step + 1 (adaptive: λ_t = λ·δ^(1/t) grows from δ·λ to λ)."""
    if schedule == "constant":
        return 1.0
    if schedule == "adaptive":
        return delta ** (1.0 / (step + 1))
    raise ValueError(f"lambda_schedule {schedule!r}: not one of {LAMBDA_SCHEDULES}")


def normalize_gradients(params: list[torch.Tensor]) -> None:
    """Each image's mask gradient (all parts together) divided by its L2 norm + 1e-7, in
    place (the StartGrad repository's ``normalize_gradient``)."""
    with torch.no_grad():
        sq = sum(m.grad.flatten(1).double().pow(2).sum(1) for m in params)
        norm = sq.sqrt() + 1e-7
        for m in params:
            m.grad.div_(norm.to(m.grad.dtype).view(-1, *([1] * (m.grad.ndim - 1))))
