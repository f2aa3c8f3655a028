"""Bjøntegaard delta rate and PSNR between two rate–distortion curves.

Piecewise cubic Hermite interpolation (pchip) of log-rate against quality (and quality against log-rate),
integrated over the overlapping interval: the variant used in the learned-compression literature.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from zoo.errors import InputError


def _prepare(rate: Sequence[float], dist: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    r, d = np.asarray(rate, dtype=np.float64), np.asarray(dist, dtype=np.float64)
    keep = np.isfinite(r) & np.isfinite(d) & (r > 0)
    r, d = r[keep], d[keep]
    if len(r) < 2:
        raise InputError("a curve needs at least two finite points with positive rate")
    order = np.argsort(d)
    return np.log(r[order]), d[order]


def _integral(x: np.ndarray, y: np.ndarray, lo: float, hi: float) -> float:
    from scipy.interpolate import PchipInterpolator

    # pchip needs strictly increasing abscissae: merge duplicates by averaging
    xu, inv = np.unique(x, return_inverse=True)
    yu = np.bincount(inv, weights=y) / np.bincount(inv)
    if len(xu) < 2:
        raise InputError("a curve needs at least two distinct points")
    return float(PchipInterpolator(xu, yu).integrate(lo, hi))


def bd_rate(
    rate_ref: Sequence[float], dist_ref: Sequence[float], rate_test: Sequence[float], dist_test: Sequence[float]
) -> float:
    """Average rate difference (%) of the test curve against the reference at equal quality (negative: better)."""
    lr1, d1 = _prepare(rate_ref, dist_ref)
    lr2, d2 = _prepare(rate_test, dist_test)
    lo, hi = max(d1.min(), d2.min()), min(d1.max(), d2.max())
    if hi <= lo:
        raise InputError("the two curves do not overlap in quality; BD-rate is undefined")
    avg = (_integral(d2, lr2, lo, hi) - _integral(d1, lr1, lo, hi)) / (hi - lo)
    return float((np.exp(avg) - 1) * 100)


def bd_psnr(
    rate_ref: Sequence[float], dist_ref: Sequence[float], rate_test: Sequence[float], dist_test: Sequence[float]
) -> float:
    """Average quality difference (dB for PSNR) of the test curve against the reference at equal rate."""
    lr1, d1 = _prepare(rate_ref, dist_ref)
    lr2, d2 = _prepare(rate_test, dist_test)
    o1, o2 = np.argsort(lr1), np.argsort(lr2)
    lr1, d1, lr2, d2 = lr1[o1], d1[o1], lr2[o2], d2[o2]
    lo, hi = max(lr1.min(), lr2.min()), min(lr1.max(), lr2.max())
    if hi <= lo:
        raise InputError("the two curves do not overlap in rate; BD-PSNR is undefined")
    return (_integral(lr2, d2, lo, hi) - _integral(lr1, d1, lo, hi)) / (hi - lo)


def psnr_at(bpp: Sequence[float], psnr: Sequence[float], target: float = 0.5) -> float:
    """PSNR of a curve at a rate (linear in log-rate between its points); NaN outside its range."""
    import math

    order = np.argsort(bpp)
    rs, ps = np.log(np.asarray(bpp, dtype=np.float64)[order]), np.asarray(psnr, dtype=np.float64)[order]
    if not rs[0] <= math.log(target) <= rs[-1]:
        return math.nan
    return float(np.interp(math.log(target), rs, ps))
