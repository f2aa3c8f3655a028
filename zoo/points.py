"""Operating points, the facts every layer names: the distortion metrics entries are trained for, their λ tables,
and the levels of a variable-rate entry. Free of torch, so the CLI builds its choices and help from here."""

from __future__ import annotations

from zoo.errors import EntryNotFound

# CompressAI's training λ per quality 1..8 (loss λ·255²·MSE + bpp, or λ·(1 − MS-SSIM) + bpp).
LAMBDAS: dict[str, tuple[float, ...]] = {
    "mse": (0.0018, 0.0035, 0.0067, 0.0130, 0.0250, 0.0483, 0.0932, 0.1800),
    "ms-ssim": (2.40, 4.58, 8.73, 16.64, 31.73, 60.50, 115.37, 220.00),
}
METRICS = tuple(LAMBDAS)  # also the CLI's --metric choices

LEVELS = 8  # a variable-rate entry serves every level in [1, LEVELS]
LEVEL_RANGE = f"[1, {LEVELS}]"  # how messages and help texts name them


def check_metric(metric: str) -> str:
    """A metric the zoo has entries for, or EntryNotFound naming those it has."""
    if metric not in METRICS:
        raise EntryNotFound(f"unknown metric {metric!r}; metrics are {', '.join(METRICS)}")
    return metric
