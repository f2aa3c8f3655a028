"""Optimizers (the network's, and the auxiliary one for entropy-bottleneck quantiles) and LR schedules."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, MultiStepLR, ReduceLROnPlateau

from zoo.models.base import CompressionModel

SCHEDULERS = ("plateau", "cosine", "multistep", "poly")


def build_optimizers(
    model: CompressionModel,
    lr: float,
    aux_lr: float = 1e-3,
    entropy_lr: float | None = None,
    context_lr: float | None = None,
):
    """Adam for the network and Adam for the quantiles (aux loss). Parts that start fresh under trained
    transforms (a warm start from another architecture) need far larger steps than they do, so they can get
    their own rates: `entropy_lr` for the factorized entropy bottleneck's density parameters, `context_lr` for a
    context model's context prediction and entropy parameters (grown from a mean-scale model, `zoo.train.grow`)."""
    main_params = model.main_parameters()
    own: list[tuple[list[torch.nn.Parameter], float]] = []
    if entropy_lr is not None:
        density = [p for n, p in model.named_parameters() if "entropy_bottleneck." in n and not n.endswith("quantiles")]
        own.append((density, entropy_lr))
    if context_lr is not None:
        context = [
            p for n, p in model.named_parameters() if n.startswith(("context_prediction.", "entropy_parameters."))
        ]
        own.append((context, context_lr))
    ids = {id(p) for params, _ in own for p in params}
    groups: list[dict[str, Any]] = [{"params": [p for p in main_params if id(p) not in ids]}]
    groups += [{"params": params, "lr": rate} for params, rate in own if params]
    main = torch.optim.Adam(groups, lr=lr)
    aux = torch.optim.Adam(model.aux_parameters(), lr=aux_lr)
    return main, aux


def build_scheduler(
    name: str,
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    progress: Callable[[int], int] | None = None,
    warmup: int = 0,
) -> LRScheduler | ReduceLROnPlateau:
    """plateau: ×0.5 after 3 validations without improvement; cosine/poly: decay to 1% over the run;
    multistep: ×0.1 at 80% and 95% of the steps. `progress` maps the step to the schedule's position on a
    10,000 scale (a wall-clock budget); `warmup`: linear warm-up from 1% over that many steps."""
    total = max(1, total_steps)
    if progress is not None:
        total = 10_000
    where = progress or (lambda s: s)

    def ramp(s: int) -> float:
        return min(1.0, 0.01 + 0.99 * s / warmup) if warmup else 1.0

    if name == "plateau":
        return ReduceLROnPlateau(optimizer, mode="min", factor=0.5, patience=3)
    if name == "cosine":
        return LambdaLR(
            optimizer,
            lambda s: ramp(s) * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(where(s), total) / total))),
        )
    if name == "multistep":
        return MultiStepLR(optimizer, milestones=[int(0.8 * total), int(0.95 * total)], gamma=0.1)
    if name == "poly":
        return LambdaLR(optimizer, lambda s: ramp(s) * max(0.01, (1 - min(where(s), total) / total) ** 0.9))
    raise ValueError(f"unknown scheduler {name!r}; schedulers are {', '.join(SCHEDULERS)}")


def grad_norm(parameters) -> float:
    norms = [p.grad.detach().norm() for p in parameters if p.grad is not None]
    return float(torch.stack(norms).norm()) if norms else 0.0
