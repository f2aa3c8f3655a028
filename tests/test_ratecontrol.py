"""Rate control (zoo/ratecontrol.py): the largest setting whose real file fits, never over the budget, within
2 % of it where the range allows, a clear error when nothing fits; on a released variable-rate entry too."""

from __future__ import annotations

import math

import pytest

from tests.support import REPO, fixture_codec, kodak_image
from zoo import bitstream
from zoo.errors import BudgetTooSmall, InputError
from zoo.ratecontrol import budget_for_bpp, compress_to_size, largest_fitting

VR_ENTRY = REPO / "model_store/entries/bmshj2018-hyperprior-vr/mse/v1.12"


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def _sized(grow: float = 0.7, base: int = 300):
    """An encoder whose file grows exponentially with its setting, recording what it was asked."""
    asked: list[float] = []

    def encode(setting: float) -> bytes:
        asked.append(setting)
        return b"x" * int(base * math.exp(grow * setting))

    return encode, asked


@pytest.mark.parametrize("budget", [700, 1234, 5000, 20000, 60000])
def test_continuous_search_lands_within_2_percent_and_never_over(budget):
    encode, asked = _sized()
    fit = largest_fitting(encode, budget, low=1.0, high=8.0)
    assert fit.size <= budget
    assert fit.size >= 0.98 * budget
    assert len(asked) == fit.tries <= 14
    assert fit.data == encode(fit.setting)


def test_the_whole_range_fitting_gives_the_highest_setting_at_once():
    encode, asked = _sized()
    fit = largest_fitting(encode, 10**6, low=1.0, high=8.0)
    assert fit.setting == 8.0 and asked == [8.0]


def test_a_budget_under_the_lowest_setting_is_a_clear_error():
    encode, _ = _sized()
    with pytest.raises(
        BudgetTooSmall, match=r"even the lowest setting \(1\) makes a file of 604 bytes, over the budget of 500"
    ):
        largest_fitting(encode, 500, low=1.0, high=8.0)
    with pytest.raises(BudgetTooSmall):
        largest_fitting(encode, 500, choices=[1, 2, 3])
    for bad in (0, -5, 2.5, True):
        with pytest.raises(InputError):
            largest_fitting(encode, bad, low=1.0, high=8.0)  # type: ignore[arg-type]


@pytest.mark.parametrize("hint", [None, 1, 4, 8])
def test_choices_give_the_largest_that_fits(hint):
    encode, asked = _sized()
    choices = [1, 2, 3, 4, 5, 6, 7, 8]
    fit = largest_fitting(encode, 20000, choices=choices, hint=hint)
    assert fit.setting == 5  # 300·e^3.5 = 9934 fits, 300·e^4.2 = 20004 does not
    assert len(asked) <= 4


def test_budget_for_bpp_rounds_down():
    assert budget_for_bpp(0.5, 512, 768) == 24576
    assert budget_for_bpp(0.3333, 10, 10) == 4
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(InputError):
            budget_for_bpp(bad, 10, 10)


def _vr_codecs():
    from zoo.entry import load_entry
    from zoo.entry_codec import codec_for_model

    model, info = load_entry(VR_ENTRY)
    return lambda q: codec_for_model(model, info, level=q)


@pytest.mark.parametrize("fraction", [0.35, 0.6, 0.9])
def test_a_variable_rate_entry_searches_its_continuous_level(fraction):
    """A budget between the lowest and highest level's real files: the file fits, within 2 % of the budget,
    at a fractional level, and decodes with that level's codec."""
    codec_at = _vr_codecs()
    x = kodak_image("kodim05.png")[:, 128:256, 256:448].contiguous()
    low = len(bitstream.dumps(codec_at(1.0).compress(x)))
    high = len(bitstream.dumps(codec_at(8.0).compress(x)))
    budget = int(low + fraction * (high - low))
    c, level = compress_to_size(codec_at, x, budget, low=1.0, high=8.0)
    size = len(bitstream.dumps(c))
    assert 0.98 * budget <= size <= budget
    assert 1 < level < 8 and c.entry.level == level
    assert codec_at(level).decompress(c).shape == (1, 3, 128, 192)
    with pytest.raises(BudgetTooSmall, match="over the budget"):
        compress_to_size(codec_at, x, low - 1, low=1.0, high=8.0)


def test_rate_control_works_with_effort():
    codec_at = _vr_codecs()
    x = kodak_image("kodim21.png")[:, 64:128, 64:160].contiguous()
    budget = len(bitstream.dumps(codec_at(4.0).compress(x)))
    c, level = compress_to_size(codec_at, x, budget, low=1.0, high=8.0, effort=1)
    assert len(bitstream.dumps(c)) <= budget
    assert codec_at(level).decompress(bitstream.loads(bitstream.dumps(c))).shape == (1, 3, 64, 96)


def test_fixed_rate_choices_pick_among_codecs():
    """Fixed-rate: among codecs by quality (here one fixture standing in for each of two qualities)."""
    codec = fixture_codec("bmshj2018-hyperprior")
    x = kodak_image()[:, :64, :64].contiguous()
    size = len(bitstream.dumps(codec.compress(x)))
    c, q = compress_to_size(lambda q: codec, x, size, choices=[1, 2])
    assert q == 2 and len(bitstream.dumps(c)) == size
