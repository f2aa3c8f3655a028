"""Operating points have one home: the CLI's metric choices, the registry's λ tables and the variable-rate levels
all come from `zoo.points`."""

from __future__ import annotations

import argparse

import pytest

from zoo.cli import build_parser
from zoo.errors import EntryNotFound
from zoo.points import LAMBDAS, LEVEL_RANGE, LEVELS, METRICS, check_metric
from zoo.registry import ARCHITECTURES, get_arch


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_every_entry_metric_option_offers_exactly_the_registrys_metrics():
    seen = []
    for name, sub in _subcommands(build_parser()).items():
        for action in sub._actions:
            # `zoo bd --metric` and `--plot-metric` name a quality axis (psnr, ms-ssim), not an entry's metric
            if action.dest == "metric" and name != "bd":
                assert tuple(action.choices) == METRICS, name
                seen.append(name)
    assert {"encode", "decode", "eval", "export", "archive", "train"} <= set(seen)


def test_metrics_levels_and_lambdas_agree():
    assert set(METRICS) == set(LAMBDAS)
    assert LEVEL_RANGE == f"[1, {LEVELS}]"
    for name, spec in ARCHITECTURES.items():
        if spec.variable_rate:
            assert get_arch(name).check_level(LEVELS) == LEVELS
            with pytest.raises(EntryNotFound):
                get_arch(name).check_level(LEVELS + 0.5)
    with pytest.raises(EntryNotFound, match="metrics are mse, ms-ssim"):
        check_metric("ssim")
