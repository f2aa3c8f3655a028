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
    with pytest.raises(ArchitectureError, match="adding up"):
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


def test_update_builds_tables_in_compressai_layout():
    model = create_model("bmshj2018-hyperprior", N=8, M=12).eval()
    assert model.update() is True
    assert model.update() is False  # kept unless forced
    gc = model.gaussian_conditional
    assert gc._quantized_cdf.shape[0] == 64
    assert (gc._quantized_cdf[:, 0] == 0).all()
    ends = gc._quantized_cdf.gather(1, (gc._cdf_length - 1).long()[:, None])
    assert (ends == 1 << 16).all()


def _assert_same_tables(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor], prefix: str) -> None:
    assert torch.equal(ours[prefix + "_cdf_length"], theirs[prefix + "_cdf_length"])
    assert torch.equal(ours[prefix + "_offset"], theirs[prefix + "_offset"])
    a, b, lengths = ours[prefix + "_quantized_cdf"], theirs[prefix + "_quantized_cdf"], theirs[prefix + "_cdf_length"]
    for row, n in enumerate(lengths.tolist()):  # every entry a coder reads; the rest of a row is padding
        assert torch.equal(a[row, :n], b[row, :n]), f"{prefix} table {row}: {(a[row, :n] != b[row, :n]).sum()} differ"


@pytest.mark.parametrize("arch", FIXTURE_ARCHS)
def test_tables_built_from_compressai_weights_equal_its_tables(arch):
    """Every table entry CompressAI computed from these weights, bit for bit (frequencies rounded half away
    from zero like C's round; the factorized pmf as the plain difference of sigmoids)."""
    sd = fixture_state_dict(arch)
    model = model_from_state_dict(arch, sd)
    model.update(force=True)
    ours = model.state_dict()
    for prefix in ("entropy_bottleneck.", "gaussian_conditional."):
        if prefix + "_quantized_cdf" in sd:
            _assert_same_tables(ours, sd, prefix)


def test_import_compressai_keeps_its_tables_and_scale_table_bit_exact(tmp_path):
    from safetensors.torch import load_file

    from zoo.cli import main
    from zoo.entry import WEIGHTS_NAME

    sd = fixture_state_dict("bmshj2018-hyperprior")
    # A checkpoint with its own scale table (every other scale of the default one): CompressAI's tables for
    # it are the fixture's rows for those scales, since each row depends on its scale alone.
    rows = torch.arange(0, 64, 2)
    sd["gaussian_conditional.scale_table"] = sd["gaussian_conditional.scale_table"][rows].contiguous()
    for name in ("_quantized_cdf", "_cdf_length", "_offset"):
        sd["gaussian_conditional." + name] = sd["gaussian_conditional." + name][rows].contiguous()
    width = int(sd["gaussian_conditional._cdf_length"].max())
    sd["gaussian_conditional._quantized_cdf"] = sd["gaussian_conditional._quantized_cdf"][:, :width].contiguous()
    ckpt = tmp_path / "ckpt.pth"
    torch.save(sd, ckpt)
    assert main(["import-compressai", str(ckpt), "--arch", "bmshj2018-hyperprior", "--out", str(tmp_path / "e")]) == 0
    written = load_file(str(tmp_path / "e" / WEIGHTS_NAME))
    assert torch.equal(written["gaussian_conditional.scale_table"], sd["gaussian_conditional.scale_table"])
    for prefix in ("entropy_bottleneck.", "gaussian_conditional."):
        _assert_same_tables(written, sd, prefix)


def test_wavefronts_only_need_earlier_wavefronts():
    """The claim wavefront coding rests on: every causal tap of the 5x5 mask lies on an earlier wavefront."""
    from zoo.models.google import _wavefront_positions

    model = fixture_model("mbt2018")
    mask = model.context_prediction.mask[0, 0]
    taps = [(dy - 2, dx - 2) for dy in range(5) for dx in range(5) if mask[dy, dx] != 0]
    height, width = 7, 11
    fronts = _wavefront_positions(height, width, slope=3)
    assert len(fronts) == 3 * height + width - 3
    step = {}
    for t, (hs, ws) in enumerate(fronts):
        assert list(hs) == sorted(hs)
        step.update({(int(h), int(w)): t for h, w in zip(hs, ws, strict=True)})
    assert len(step) == height * width
    for (h, w), t in step.items():
        for dy, dx in taps:
            if (h + dy, w + dx) in step:
                assert step[(h + dy, w + dx)] < t, ((h, w), (dy, dx))


@pytest.mark.parametrize("arch", ["mbt2018", "cheng2020-anchor", "cheng2020-attn"])
def test_wavefront_coding_is_the_serial_model_in_fewer_steps(arch, monkeypatch):
    """Format 2 codes the same symbols with the same tables as raster order (format 1), one coder call
    per wavefront: the latent g_s receives is identical, the payload the same give or take the flush."""
    from tests.support import kodak_image
    from zoo import coder

    model = fixture_model(arch)
    x = kodak_image("kodim23.png")[None, :, 128:192, 256:384]  # y is 4x8
    calls = []
    decode = coder.Decoder.decode
    monkeypatch.setattr(coder.Decoder, "decode", lambda self, *a: calls.append(1) or decode(self, *a))
    seen: list[torch.Tensor] = []
    hook = model.g_s.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    try:
        out = {}
        for order in ("raster", "wavefront"):
            (latents,) = model.compress(x, order=order)
            calls.clear()
            out[order] = (model.decompress([latents], order=order), len(latents.stream("y")), len(calls))
    finally:
        hook.remove()
    (x_raster, bytes_raster, calls_raster), (x_wave, bytes_wave, calls_wave) = out["raster"], out["wavefront"]
    assert calls_raster == 4 * 8 + 1 and calls_wave == 3 * 4 + 8 - 3 + 1  # + 1: z
    assert seen[0].abs().sum() > 0 and torch.equal(seen[0], seen[1])
    assert torch.equal(x_raster, x_wave)
    assert abs(bytes_raster - bytes_wave) <= 8


def test_context_loop_runs_on_one_thread_and_restores_the_setting():
    import dataclasses

    from zoo.errors import BitstreamError

    model = fixture_model("mbt2018")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen = []
        # the raster loop calls the float64 copy as a module (the wavefront loop uses its weights)
        net = model.f64("entropy_parameters")
        hook = net.register_forward_hook(lambda *_: seen.append(torch.get_num_threads()))
        (latents,) = model.compress(torch.rand(1, 3, 64, 64), order="raster")
        hook.remove()
        assert set(seen) == {1} and torch.get_num_threads() == 2
        y = latents.stream("y")
        broken = dataclasses.replace(latents, streams=(("z", latents.stream("z")), ("y", y[: len(y) // 2])))
        with pytest.raises(BitstreamError):
            model.decompress_unchecked([broken], order="raster")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_wavefront_products_in_numpy_and_in_pytorch_code_the_same_file(monkeypatch):
    """On the CPU the context model's per-wavefront products run in NumPy (held to one BLAS thread), on another
    device in PyTorch: the same float64 steps, so either decodes the other's file to the same pixels."""
    from tests.support import kodak_image
    from zoo.models import google

    model = fixture_model("mbt2018")
    x = kodak_image("kodim23.png")[None, :, 128:192, 192:320]
    blas_threads: set[int] = set()
    paths: set[bool] = set()
    products = google._Wavefronts._scales_means

    def watched(self, *args):
        paths.add(self.host)
        # the pools found when the loop first ran, NumPy's among them (a BLAS loaded later, e.g. SciPy's own, is
        # not the one its products use)
        blas_threads.update(p["num_threads"] for p in google._blas_pools().info() if p["user_api"] == "blas")
        return products(self, *args)

    monkeypatch.setattr(google._Wavefronts, "_scales_means", watched)
    coded, pixels = {}, {}
    for numpy_products in (True, False):
        monkeypatch.setattr(google, "NUMPY_PRODUCTS", numpy_products)
        (coded[numpy_products],) = model.compress(x)
    assert coded[True].stream("y") == coded[False].stream("y") and len(coded[True].stream("y")) > 100
    for numpy_products in (True, False):
        monkeypatch.setattr(google, "NUMPY_PRODUCTS", numpy_products)
        pixels[numpy_products] = model.decompress([coded[not numpy_products]])
    assert torch.equal(pixels[True], pixels[False])
    assert paths == {True, False}  # both paths ran: NumPy's by default on the CPU
    assert blas_threads == {1}


@pytest.mark.parametrize("arch", ["cheng2020-anchor", "cheng2020-attn", "bmshj2018-hyperprior"])
def test_inference_paths_equal_the_autograd_forward(arch, one_thread):
    """Without autograd the residual blocks and GDN compute into their own temporaries, and the upsampling
    block runs its two subpixel convolutions as one: the transforms' outputs are those of the autograd path
    bit for bit, and their inputs are left alone. On one thread: with two, the autograd path itself moves
    cheng2020's synthesis by 1.5e-8 (the inference paths agree with each other at any thread count), so a suite
    that leaves one thread set elsewhere passed where this test alone did not."""
    from zoo.layers import reuse_buffers

    torch.manual_seed(0)
    model = create_model(arch, N=32, M=32) if arch.startswith("bmshj") else create_model(arch, N=32)
    x = torch.rand(2, 3, 64, 96)
    with torch.enable_grad():
        assert not reuse_buffers()
        y_ref = model.g_a(x)
        x_ref = model.g_s(y_ref.detach())
    y_in = torch.round(y_ref.detach())
    inputs = (x.clone(), y_in.clone())
    for mode in (torch.no_grad, torch.inference_mode):
        with mode():
            assert reuse_buffers()
            assert torch.equal(model.g_a(x), y_ref)
            assert torch.equal(model.g_s(y_ref.detach()), x_ref)
        assert torch.equal(x, inputs[0]) and torch.equal(y_in, inputs[1])


def test_wavefront_weights_follow_the_model_weights():
    """The context loop keeps its matrices with the float64 copies of the networks; a weight update must reach
    them: the latent it quantizes stays the one raster order (which runs the networks) makes. On a copy: the
    fixture is shared by the session, and the golden files of test_bitstream decode with its weights."""
    import copy

    model = copy.deepcopy(fixture_model("mbt2018"))
    torch.manual_seed(0)
    y = torch.randn(1, model.M, 3, 5) * 4
    params = torch.randn(1, 2 * model.M, 3, 5, dtype=torch.float64)
    for _ in range(2):
        wavefront = model._quantize(y, params, "wavefront")[0]
        assert torch.equal(wavefront.float(), model._quantize(y, params, "raster")[0].float())
        with torch.no_grad():
            model.entropy_parameters[0].weight.mul_(0.5)
            model.context_prediction.weight.mul_(0.5)
    assert not torch.equal(wavefront, model._quantize(y, params, "wavefront")[0])
