"""Running averages of training and validation figures over an epoch (or a logging interval)."""

from __future__ import annotations

import math


class AverageMeter:
    def __init__(self) -> None:
        self.total, self.count = 0.0, 0

    def update(self, value: float, n: int = 1) -> None:
        if math.isfinite(value):
            self.total += value * n
            self.count += n

    @property
    def avg(self) -> float:
        return self.total / self.count if self.count else math.nan

    def reset(self) -> None:
        self.total, self.count = 0.0, 0


class MeterGroup:
    def __init__(self, *names: str):
        self.meters = {n: AverageMeter() for n in names}

    def update(self, n: int = 1, **values: float) -> None:
        for k, v in values.items():
            self.meters.setdefault(k, AverageMeter()).update(float(v), n)

    def averages(self) -> dict[str, float]:
        return {k: m.avg for k, m in self.meters.items()}

    def reset(self) -> None:
        for m in self.meters.values():
            m.reset()
