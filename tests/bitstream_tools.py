"""Helpers for tests that build zoo files: the golden files' codecs and inputs (tests/golden)."""

from __future__ import annotations

import torch

from tests.support import fixture_model, fixture_state_dict
from zoo.codec import Codec
from zoo.compressed import EntryId
from zoo.entry import weights_fingerprint


def golden_codec(arch: str, tile_size: int = 0) -> Codec:
    entry = EntryId(arch, 1, "mse", "fixture")
    return Codec(fixture_model(arch), entry, weights_fingerprint(fixture_state_dict(arch)), tile_size=tile_size)


def golden_input(h: int, w: int) -> torch.Tensor:
    from tests.support import kodak_image

    return kodak_image("kodim23.png")[:, 200 : 200 + h, 300 : 300 + w]
