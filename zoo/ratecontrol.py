"""Rate control: the largest setting of an encoder whose real file fits a byte budget.

`largest_fitting` knows nothing of models: it takes any `setting -> file bytes` function, a continuous range
or a list of choices, and searches by real file sizes (never an estimate), so it serves classical codecs'
quality knobs as well as zoo entries. `compress_to_size` applies it to zoo codecs, effort included.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from zoo.errors import BudgetTooSmall, InputError

if TYPE_CHECKING:
    from torch import Tensor

    from zoo.codec import Codec
    from zoo.compressed import Compressed

DEFAULT_TOLERANCE = 0.02  # land within 2 % under the budget where the range allows
DEFAULT_MAX_TRIES = 14
SMALLEST_STEP = 1e-3  # a continuous search stops when its bracket is narrower than this


@dataclass(frozen=True)
class Fit:
    """The chosen setting, its file, and how many encodes the search made."""

    setting: float
    data: bytes
    tries: int

    @property
    def size(self) -> int:
        return len(self.data)


def check_budget(max_bytes: object) -> int:
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
        raise InputError(f"a byte budget must be a positive whole number of bytes, not {max_bytes!r}")
    return max_bytes


def budget_for_bpp(bpp: float, height: int, width: int) -> int:
    """The byte budget of `bpp` bits per pixel on an image of that size (rounded down: never over it)."""
    if not isinstance(bpp, int | float) or isinstance(bpp, bool) or not math.isfinite(bpp) or bpp <= 0:
        raise InputError(f"a target bpp must be a positive number, not {bpp!r}")
    return max(1, int(bpp * height * width / 8))


def largest_fitting(
    encode: Callable[[float], bytes],
    max_bytes: int,
    *,
    low: float | None = None,
    high: float | None = None,
    choices: Sequence[float] | None = None,
    hint: float | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    max_tries: int = DEFAULT_MAX_TRIES,
) -> Fit:
    """The largest setting whose file (`encode(setting)`) is at most `max_bytes`, assuming size grows with the
    setting: over the continuous range [low, high], searched until a fitting file is within `tolerance` of the
    budget (or the bracket closes, or `max_tries` encodes were made), or among `choices`. `hint` (a setting
    likely near the answer) is tried first. The result never exceeds the budget; BudgetTooSmall when even
    the lowest setting does not fit."""
    budget = check_budget(max_bytes)
    tries = 0

    def size_at(setting: float) -> tuple[float, bytes]:
        nonlocal tries
        tries += 1
        return setting, encode(setting)

    if choices is not None:
        return _among(sorted(set(choices)), size_at, budget, hint, lambda: tries)
    if low is None or high is None or not low <= high:
        raise InputError(f"a continuous search needs low <= high, not {low!r}..{high!r}")
    fits: tuple[float, bytes] | None = None
    over: tuple[float, bytes] | None = None
    for setting in (hint, high, low) if hint is not None else (high, low):
        if setting is None or (fits and setting <= fits[0]) or (over and setting >= over[0]):
            continue
        s, data = size_at(min(max(setting, low), high))
        if len(data) <= budget:
            fits = (s, data)
            if s >= high:
                return Fit(s, data, tries)
        else:
            over = (s, data)
    if fits is None:
        assert over is not None
        raise BudgetTooSmall(
            f"even the lowest setting ({_fmt(low)}) makes a file of {len(over[1])} bytes, over the budget of "
            f"{budget} bytes"
        )
    assert over is not None
    goal = budget * (1 - tolerance / 2)
    while tries < max_tries and len(fits[1]) < (1 - tolerance) * budget and over[0] - fits[0] > SMALLEST_STEP:
        (s0, d0), (s1, d1) = fits, over
        # secant on log size (file size is roughly exponential in a quality level), kept off the bracket's ends
        t = (math.log(goal) - math.log(max(len(d0), 1))) / max(math.log(len(d1)) - math.log(max(len(d0), 1)), 1e-9)
        t = min(max(t, 0.1), 0.9)
        s, data = size_at(s0 + t * (s1 - s0))
        if len(data) <= budget:
            fits = (s, data)
        else:
            over = (s, data)
    return Fit(fits[0], fits[1], tries)


def _among(
    options: list[float],
    size_at: Callable[[float], tuple[float, bytes]],
    budget: int,
    hint: float | None,
    tries: Callable[[], int],
) -> Fit:
    """Binary search over sorted choices for the largest that fits."""
    if not options:
        raise InputError("no settings to choose from")
    lo, hi = 0, len(options) - 1  # the answer's index is in [lo, hi] once lo is known to fit
    best: tuple[float, bytes] | None = None
    first = options.index(hint) if hint in options else 0
    s, data = size_at(options[first])
    if len(data) <= budget:
        best, lo = (s, data), first + 1
    elif first == 0:
        raise BudgetTooSmall(
            f"even the lowest setting ({_fmt(options[0])}) makes a file of {len(data)} bytes, over the budget "
            f"of {budget} bytes"
        )
    else:
        hi = first - 1
        lo = 0
    while lo <= hi:
        mid = (lo + hi) // 2
        s, data = size_at(options[mid])
        if len(data) <= budget:
            best, lo = (s, data), mid + 1
        else:
            hi = mid - 1
    if best is None:
        raise BudgetTooSmall(
            f"even the lowest setting ({_fmt(options[0])}) makes a file over the budget of {budget} bytes"
        )
    return Fit(best[0], best[1], tries())


def _fmt(setting: float) -> str:
    return f"{setting:g}"


def compress_to_size(
    codec_at: Callable[[float], Codec],
    x: Tensor,
    max_bytes: int,
    *,
    low: float | None = None,
    high: float | None = None,
    choices: Sequence[float] | None = None,
    effort: int = 0,
    seed: int = 0,
    tolerance: float = DEFAULT_TOLERANCE,
) -> tuple[Compressed, float]:
    """The file of the largest quality whose real file fits `max_bytes`, and that quality. `codec_at(q)`: the
    codec at quality q, a level in [low, high] of a variable-rate entry or one of `choices` (fixed-rate).

    With `effort`, the quality is first found without refinement (cheap), then the refined search starts
    there: refining usually shrinks a file at equal quality, but keeping the better file by R + λD may
    keep a larger one, so the refined file is measured, never assumed to fit."""
    from zoo import bitstream
    from zoo.refine import check_effort

    check_effort(effort)
    made: dict[tuple[float, int], Compressed] = {}

    def encoder(level_effort: int) -> Callable[[float], bytes]:
        def encode(setting: float) -> bytes:
            c = codec_at(setting).compress(x, effort=level_effort, seed=seed)
            made[(setting, level_effort)] = c
            return bitstream.dumps(c)

        return encode

    kwargs = {"low": low, "high": high, "choices": choices, "tolerance": tolerance}
    fit = largest_fitting(encoder(0), max_bytes, **kwargs)  # type: ignore[arg-type]
    if not effort:
        return made[(fit.setting, 0)], fit.setting
    try:
        refined = largest_fitting(encoder(effort), max_bytes, hint=fit.setting, max_tries=6, **kwargs)  # type: ignore[arg-type]
    except BudgetTooSmall:  # every refined file tried was larger: the plain one fits
        return made[(fit.setting, 0)], fit.setting
    return made[(refined.setting, effort)], refined.setting
