"""Encode-time refinement (zoo/refine.py, `Codec.compress(effort=)`): refined files are ordinary files of their
entry, never worse in R + λD than the plain encoder's, repeatable given a seed; effort 0 is the plain encoder."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.support import FIXTURE_ARCHS, REPO, fixture_codec, fixture_model, kodak_image
from zoo import bitstream
from zoo.errors import InputError
from zoo.imageio import to_uint8

VR_ENTRIES = {
    "bmshj2018-hyperprior-vr": REPO / "model_store/entries/bmshj2018-hyperprior-vr/mse/v1.12",
    "mbt2018-mean-vr": REPO / "model_store/entries/mbt2018-mean-vr/mse/v1.12",
}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def _crop(name: str, top: int, left: int, h: int, w: int) -> torch.Tensor:
    return kodak_image(name)[:, top : top + h, left : left + w].contiguous()


def _file_cost(codec, c, x: torch.Tensor) -> float:
    """bpp of the whole file plus the entry's λ-weighted MSE of the 8-bit decoded image, computed here."""
    from zoo.refine import entry_objective

    lam = entry_objective(codec.entry).lmbda
    data = bitstream.dumps(c)
    decoded = codec.decompress_uint8(bitstream.loads(data)).astype(np.float64)
    ref = x.permute(1, 2, 0).double().numpy() * 255
    return 8 * len(data) / (x.shape[1] * x.shape[2]) + lam * float(np.mean((decoded - ref) ** 2))


@pytest.mark.parametrize("arch", FIXTURE_ARCHS)
def test_coding_given_latents_is_the_plain_encoder(arch):
    """compress(x) is compress_latents(x, analyze(x)): effort 0 and the refined path share every coding step."""
    model = fixture_model(arch)
    x = _crop("kodim23.png", 200, 300, 64, 64)[None]
    plain = model.compress(x)
    with torch.no_grad():
        again = model.compress_latents(x, model.analyze(x))
    assert again == plain


@pytest.mark.parametrize("arch", FIXTURE_ARCHS)
def test_refined_streams_decode_through_the_normal_path_and_cost_no_more(arch):
    """Every architecture: effort 1 gives a file that `bitstream.loads` + `decompress` read like any other and
    whose R + λD (real bytes, 8-bit decoded pixels) is at most effort 0's; these CompressAI fixtures' costs
    drop well below it."""
    codec = fixture_codec(arch)
    x = _crop("kodim23.png", 180, 280, 64, 80)
    plain, refined = codec.compress(x), codec.compress(x, effort=1)
    data = bitstream.dumps(refined)
    decoded = codec.decompress(bitstream.loads(data))
    assert decoded.shape == (1, 3, 64, 80)
    assert _file_cost(codec, refined, x) < _file_cost(codec, plain, x)


@pytest.mark.parametrize("arch", ["bmshj2018-hyperprior", "mbt2018-mean", "elic2022-official"])
def test_refined_latents_decode_to_exactly_the_integers_coded(arch):
    """The refined y/z strings decode through the decoder that the fixture tests hold CompressAI-identical to
    the very latents the encoder quantized: round(z - median) + median, and y under the tables its scales pick."""
    model = fixture_model(arch)
    codec = fixture_codec(arch)
    from zoo.refine import EFFORTS, entry_objective, refine_latents

    x = _crop("kodim05.png", 100, 100, 64, 64)[None]
    latents = refine_latents(model, x, (64, 64), entry_objective(codec.entry), EFFORTS[1], seed=3)
    (tile,) = model.compress_latents(x, latents)
    eb = model.latent_codec.hyper.entropy_bottleneck if hasattr(model, "latent_codec") else model.entropy_bottleneck
    z_hat = eb.decompress([tile.stream("z")], tile.latent_hw)
    medians = eb.medians().detach().reshape(1, -1, 1, 1)
    assert torch.equal(z_hat, torch.round(latents["z"] - medians) + medians)
    # and the whole image decodes as the normal decoder decodes a plain file (index checksum included)
    x_hat = model.decompress([tile])
    with torch.no_grad():
        relaxed = model.relaxed_forward(latents, torch.round).x_hat.clamp(0, 1)
    if arch != "elic2022-official":  # no context model: the rounded relaxed path is the coder's y_hat (but for
        # means computed in float32 rather than float64, which may move a rare symbol)
        assert (x_hat - relaxed).abs().mean() < 1e-3


@pytest.mark.parametrize("entry", sorted(VR_ENTRIES))
@pytest.mark.parametrize("level", [1, 2.5, 6])
def test_no_file_is_worse_than_effort_0_over_images_and_levels(entry, level):
    """The released variable-rate entries at integer and fractional levels, on small crops of several
    Kodak images: a refined file never costs more in the level's R + λD than the plain one."""
    import zoo

    codec = zoo.load_local(VR_ENTRIES[entry], quality=level)
    for name, top, left in (("kodim01.png", 40, 60), ("kodim07.png", 300, 400), ("kodim21.png", 10, 500)):
        x = _crop(name, top, left, 48, 64)
        plain, refined = codec.compress(x), codec.compress(x, effort=1, seed=7)
        assert _file_cost(codec, refined, x) <= _file_cost(codec, plain, x) + 1e-12
        assert codec.decompress(bitstream.loads(bitstream.dumps(refined))).shape == (1, 3, 48, 64)


def test_a_level_refines_for_its_own_lambda():
    """The objective of a variable-rate codec is its level's λ (log-linear between trained levels)."""
    import zoo
    from zoo.refine import entry_objective
    from zoo.registry import LAMBDAS

    codec = zoo.load_local(VR_ENTRIES["bmshj2018-hyperprior-vr"], quality=2.5)
    expected = math.sqrt(LAMBDAS["mse"][1] * LAMBDAS["mse"][2])
    assert entry_objective(codec.entry).lmbda == pytest.approx(expected)
    assert entry_objective(fixture_codec("mbt2018").entry).lmbda == LAMBDAS["mse"][0]


def test_refinement_is_deterministic_given_a_seed_and_decodes_without_it():
    codec = fixture_codec("mbt2018-mean")
    x = _crop("kodim19.png", 300, 200, 64, 64)
    a = bitstream.dumps(codec.compress(x, effort=1, seed=5))
    b = bitstream.dumps(codec.compress(x, effort=1, seed=5))
    assert a == b
    fresh = fixture_codec("mbt2018-mean")  # a decoder that never saw the seed
    assert np.array_equal(fresh.decompress_uint8(bitstream.loads(a)), codec.decompress_uint8(bitstream.loads(b)))


def test_effort_0_is_byte_identical_and_bad_efforts_are_refused():
    codec = fixture_codec("bmshj2018-hyperprior")
    x = _crop("kodim23.png", 0, 0, 40, 56)
    assert bitstream.dumps(codec.compress(x, effort=0)) == bitstream.dumps(codec.compress(x))
    for bad in (-1, 4, 1.5, "2", True, None):
        with pytest.raises(InputError, match="effort must be one of"):
            codec.compress(x, effort=bad)  # type: ignore[arg-type]


def test_tiles_are_refined_in_batches_within_the_tile_bound(monkeypatch):
    """A tiled image: same-size tiles are refined together, no batch over max_tile_pixels padded pixels, and
    the tiled refined file decodes and costs no more than the plain one."""
    from zoo import refine

    batches: list[tuple[int, ...]] = []
    real = refine.refine_latents

    def spy(model, x, size, objective, level, *, seed=0):
        batches.append(tuple(x.shape))
        return real(model, x, size, objective, level, seed=seed)

    monkeypatch.setattr(refine, "refine_latents", spy)
    codec = fixture_codec("bmshj2018-hyperprior", tile_size=64, max_tile_pixels=2 * 64 * 64)
    x = _crop("kodim13.png", 0, 0, 128, 200)  # 2 x 4 tiles: six 64x64, two 64x8
    plain, refined = codec.compress(x), codec.compress(x, effort=1)
    assert batches == [(2, 3, 64, 64)] * 4  # six 64x64 tiles in pairs, then the 64x8 pair (padded to 64x64)
    assert all(b[0] * b[2] * b[3] <= codec.max_tile_pixels for b in batches)
    assert len(refined.tiles) == 8
    assert _file_cost(codec, refined, x) <= _file_cost(codec, plain, x)
    assert to_uint8(codec.decompress(refined)).shape == (128, 200, 3)


def test_sga_samples_lie_between_floor_and_ceil_and_harden_as_tau_falls():
    from zoo.refine import sga

    g = torch.Generator().manual_seed(0)
    v = torch.linspace(-3, 3, 1001)
    soft = sga(0.5, g)(v)
    assert torch.all(soft >= torch.floor(v) - 1e-6) and torch.all(soft <= torch.ceil(v) + 1e-6)
    hard = sga(0.01, g)(v)
    away = (v - torch.floor(v) - 0.5).abs() > 0.1  # clear of the half-way points
    assert torch.allclose(hard[away], torch.round(v[away]), atol=1e-3)


def test_a_refinement_that_makes_things_worse_is_never_kept(monkeypatch):
    """Keep-the-better is decided on real bytes and pixels: latents pushed far off (a refinement gone wrong)
    cost more, so the file is the plain encoder's, byte for byte."""
    from zoo import refine

    def worse(model, x, size, objective, level, *, seed=0):
        with torch.no_grad():
            return {name: t + 4.0 for name, t in model.analyze(x).items()}

    monkeypatch.setattr(refine, "refine_latents", worse)
    codec = fixture_codec("mbt2018-mean")
    x = _crop("kodim03.png", 200, 200, 64, 96)
    assert bitstream.dumps(codec.compress(x, effort=2)) == bitstream.dumps(codec.compress(x))


@pytest.mark.parametrize(
    "arch,cls",
    [
        ("bmshj2018-factorized", "FactorizedPrior"),
        ("bmshj2018-hyperprior", "ScaleHyperprior"),
        ("mbt2018-mean", "MeanScaleHyperprior"),
    ],
)
def test_a_refined_stream_of_a_compressai_fixture_decodes_in_compressai_to_the_same_pixels(arch, cls):
    """Where CompressAI is installed: its own model class, loaded with the fixture's state dict, decodes the
    refined y/z strings (its `decompress`, its entropy coder) to the pixels zoo decodes."""
    models = pytest.importorskip("compressai.models")
    from tests.support import fixture_state_dict

    codec = fixture_codec(arch)
    x = _crop("kodim23.png", 200, 300, 64, 64)
    c = codec.compress(x, effort=1)
    (tile,) = c.tiles
    theirs = getattr(models, cls)(N=32, M=48)
    theirs.load_state_dict(fixture_state_dict(arch))
    theirs.eval()
    strings = [[tile.stream(name)] for name in ("y", "z") if name in codec.model.latent_names]
    assert c != codec.compress(x)  # refinement changed the streams
    with torch.no_grad():
        out = theirs.decompress(strings, list(tile.latent_hw))["x_hat"]
    assert np.array_equal(to_uint8(out.clamp(0, 1)), codec.decompress_uint8(c))


@pytest.mark.parametrize("arch", ["bmshj2018-hyperprior", "mbt2018-mean", "mbt2018"])
def test_the_bfloat16_search_costs_what_float32_says_and_leaves_the_model_alone(arch):
    """Under bfloat16 autocast the model's float32 islands keep the relaxed cost within 1 % of float32's, both
    searches lower it, and neither touches the weights or their memory order (the decoder's numerics)."""
    from zoo.refine import EffortLevel, entry_objective, refine_latents, sga

    codec = fixture_codec(arch)
    model = codec.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = codec._pad(_crop("kodim05.png", 100, 200, 64, 64)[None])
    objective = entry_objective(codec.entry)

    def cost(latents, bf16: bool) -> float:
        generator = torch.Generator().manual_seed(3)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model.relaxed_forward(latents, sga(0.05, generator))
        bits = sum(-torch.log2(lik.float()).sum() for lik in out.likelihoods.values())
        return float(bits / 64**2 + objective.distortion(out.x_hat.float().clamp(0, 1), x).sum())

    with torch.no_grad():
        start = model.analyze(x)
    assert cost(start, True) == pytest.approx(cost(start, False), rel=0.01)
    for bf16 in (False, True):
        refined = refine_latents(model, x, (64, 64), objective, EffortLevel(12, lr=2e-2), seed=1, bf16=bf16)
        assert all(t.is_contiguous() for t in refined.values())
        assert cost(refined, False) < cost(start, False)
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]) and value.is_contiguous(), name
