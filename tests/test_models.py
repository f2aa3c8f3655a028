"""Parity with CompressAI: its own checkpoints load strictly and reproduce its outputs."""

from __future__ import annotations

import pytest
import torch

from tests.support import FIXTURE_ARCHS, PASS_ARCHS, fixture_expected, fixture_model, fixture_state_dict, psnr
from zoo.errors import ArchitectureError, EntryNotFound, TablesMissingError
from zoo.registry import ARCHITECTURES, create_model, get_arch, infer_widths, model_from_state_dict


@pytest.mark.parametrize("arch", FIXTURE_ARCHS)
def test_forward_matches_compressai(arch):
    expected, _ = fixture_expected(arch)
    model = fixture_model(arch)
    with torch.no_grad():
        out = model(expected["x"])
    assert psnr(out.x_hat, expected["forward_x_hat"]) >= 60
    for name, lik in out.likelihoods.items():
        ref = expected[f"likelihoods_{name}"]
        rel = (lik - ref).abs() / ref.abs().clamp_min(1e-12)
        assert (rel <= 1e-4).double().mean().item() >= 0.999, name


@pytest.mark.parametrize("arch", FIXTURE_ARCHS)
def test_compress_matches_compressai(arch):
    expected, meta = fixture_expected(arch)
    model = fixture_model(arch)
    (latents,) = model.compress(expected["x"])
    x_hat = model.decompress([latents])
    assert psnr(x_hat, expected["decompress_x_hat"]) >= 60
    ours = 8 * sum(len(data) for _, data in latents.streams)
    assert abs(ours - meta["compressed_bits"]) <= 0.01 * meta["compressed_bits"], (
        ours,
        meta["compressed_bits"],
    )


@pytest.mark.parametrize("arch", FIXTURE_ARCHS)
def test_widths_inferred_from_shapes(arch):
    sd = fixture_state_dict(arch)
    widths = infer_widths(arch, sd)
    assert widths["N"] == 32
    if "M" in widths:
        assert widths["M"] == 48
    if arch.startswith("elic2022"):
        assert widths["groups"] == (4, 4, 8, 8, 24)


@pytest.mark.parametrize("arch", PASS_ARCHS)
def test_streams_are_compressai_bytes(arch):
    """Same symbols, order, tables and coder as CompressAI: each pass's stream is its string, byte for byte
    (CompressAI lists y's strings first, then z's)."""
    expected, meta = fixture_expected(arch)
    (latents,) = fixture_model(arch).compress(expected["x"])
    names = [name for name, _ in latents.streams]
    assert names == ["z", *(n for n in names if n != "z")] and len(names) == len(meta["compress_strings_hex"])
    ours = [data.hex() for _, data in latents.streams]
    theirs = [s for strings in meta["compress_strings_hex"] for s in strings]
    assert ours[1:] + ours[:1] == theirs


def test_elic_groups_must_add_up_to_M():
    with pytest.raises(ValueError, match="add up"):
        create_model("elic2022-official", N=8, M=16, groups=(4, 4, 4))


def test_every_arch_builds_at_every_quality_with_its_widths():
    for name, spec in ARCHITECTURES.items():
        built: set[tuple] = set()
        for q in spec.qualities:
            widths = spec.widths(q)
            assert spec.lmbda(q, "mse") > 0 and spec.lmbda(q, "ms-ssim") > 0
            if tuple(widths.items()) in built:  # qualities that share widths build the same model
                continue
            built.add(tuple(widths.items()))
            model = create_model(name, q)
            inferred = infer_widths(name, model.state_dict())
            assert {k: inferred[k] for k in widths} == widths
            assert set(inferred) == set(widths) | set(spec.structure_keys)
    assert get_arch("bmshj2018-hyperprior").lmbda(3) == 0.0067


def test_unknown_names_list_what_exists():
    with pytest.raises(EntryNotFound, match="bmshj2018-hyperprior"):
        get_arch("bmshj2019")
    with pytest.raises(EntryNotFound, match="1, 2, 3, 4, 5, 6"):
        get_arch("cheng2020-anchor").widths(7)


def test_wrong_architecture_checkpoint_is_refused():
    with pytest.raises(ArchitectureError):
        model_from_state_dict("mbt2018", fixture_state_dict("bmshj2018-hyperprior"))


def test_missing_tables_is_a_clear_error():
    model = create_model("bmshj2018-hyperprior", N=8, M=8).eval()
    with pytest.raises(TablesMissingError, match="update"):
        model.compress(torch.rand(1, 3, 64, 64))


def test_update_builds_tables_that_match_compressai_layout():
    model = create_model("bmshj2018-hyperprior", N=8, M=12).eval()
    assert model.update() is True
    assert model.update() is False  # kept unless forced
    gc = model.gaussian_conditional
    assert gc._quantized_cdf.shape[0] == 64
    assert (gc._quantized_cdf[:, 0] == 0).all()
    ends = gc._quantized_cdf.gather(1, (gc._cdf_length - 1).long()[:, None])
    assert (ends == 1 << 16).all()
    # Same tables as CompressAI computes from the same scale table (its fixture carries them).
    ref = fixture_state_dict("bmshj2018-hyperprior")
    assert torch.equal(gc._cdf_length, ref["gaussian_conditional._cdf_length"])
    assert torch.equal(gc._offset, ref["gaussian_conditional._offset"])
    same = (gc._quantized_cdf == ref["gaussian_conditional._quantized_cdf"]).double().mean().item()
    assert same > 0.99  # float erfc differences can move a few tail counts in a row or two


def test_eb_tables_from_compressai_weights_match_its_tables():
    sd = fixture_state_dict("bmshj2018-factorized")
    model = model_from_state_dict("bmshj2018-factorized", sd)
    model.update(force=True)
    eb = model.entropy_bottleneck
    assert torch.equal(eb._offset, sd["entropy_bottleneck._offset"])
    assert torch.equal(eb._cdf_length, sd["entropy_bottleneck._cdf_length"])
    diff = (eb._quantized_cdf - sd["entropy_bottleneck._quantized_cdf"]).abs().max().item()
    assert diff <= 2
