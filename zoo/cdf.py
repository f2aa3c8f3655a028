"""Probability mass functions to integer CDF tables, the form the native coder consumes.

Same semantics as CompressAI's `pmf_to_quantized_cdf`: the tail mass becomes a last (escape) symbol,
every symbol keeps a frequency of at least 1, and the table sums to exactly 2**precision.
"""

from __future__ import annotations

import numpy as np


def pmf_to_quantized_cdf(pmf: np.ndarray, tail_mass: float, precision: int = 16) -> np.ndarray:
    """int32 CDF of length len(pmf) + 2: cdf[0] = 0, cdf[-1] = 2**precision, escape symbol last."""
    probs = np.append(np.asarray(pmf, dtype=np.float32).reshape(-1), np.float32(tail_mass))
    if not np.all(np.isfinite(probs)) or np.any(probs < 0):
        raise ValueError("pmf must be finite and non-negative")
    total = 1 << precision
    # Single-precision products rounded half away from zero (C's `round`, which CompressAI uses; numpy's
    # rounds half to even), then each frequency rescaled so they sum to about the total, then the last entry
    # forced to it: the same integer steps as CompressAI, so the same pmf gives the same table.
    scaled = (probs * np.float32(total)).astype(np.float64)  # exact: a float32 times a power of two
    freqs = np.floor(scaled + 0.5).astype(np.int64)
    if freqs.sum() == 0:
        raise ValueError("pmf has no mass")
    freqs = (freqs * total) // int(freqs.sum())
    cdf = np.concatenate(([0], np.cumsum(freqs)))
    cdf[-1] = total
    # Give every zero-frequency symbol one count, taken from the smallest frequency that can spare it
    # (the choice CompressAI makes, so tables built from the same pmf come out the same).
    for i in range(len(cdf) - 1):
        if cdf[i] != cdf[i + 1]:
            continue
        freq = np.diff(cdf)
        spare = np.where(freq > 1, freq, np.iinfo(np.int64).max)
        steal = int(np.argmin(spare))
        if spare[steal] == np.iinfo(np.int64).max:
            raise ValueError(f"cannot give every symbol a nonzero frequency at precision {precision}")
        if steal < i:
            cdf[steal + 1 : i + 1] -= 1
        else:
            cdf[i + 1 : steal + 1] += 1
    return cdf.astype(np.int32)
