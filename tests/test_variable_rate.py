"""Variable-rate networks: gain units, exact folding into the standard models, levels in the header, the
manifest's current entries, training, and the CLI / eval / export paths at a fractional level."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import pytest
import torch

from tests.support import kodak_path, photo_path
from zoo import bitstream
from zoo.codec import Codec
from zoo.compressed import EntryId
from zoo.entry import load_entry, save_entry
from zoo.errors import BitstreamError, EntryNotFound, InputError
from zoo.registry import LAMBDAS, create_model, get_arch

VR_ARCHS = ("bmshj2018-hyperprior-vr", "mbt2018-mean-vr", "mbt2018-vr")
LEVELS = (1, 2, 3, 4, 5, 6, 7, 8, 2.5, 6.75)


def _image(h: int = 70, w: int = 90, seed: int = 0) -> torch.Tensor:
    """A smooth image with texture: codes to non-trivial streams at every level."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    base = torch.stack([yy, xx, (yy + xx) / 2])
    return (0.7 * base + 0.3 * torch.rand(3, h, w, generator=g)).clamp(0, 1)


def _vr_model(arch: str, seed: int = 0):
    torch.manual_seed(seed)
    model = create_model(arch, N=16, M=24)
    with torch.no_grad():
        for gains in (model.y_gain, model.z_gain):
            gains.log_gain.normal_(0, 0.4)
            gains.log_inverse.normal_(0, 0.4)
        model.y_gain.init_from_lambdas(LAMBDAS["mse"], LAMBDAS["mse"][2])
        model.y_gain.log_gain.add_(torch.randn_like(model.y_gain.log_gain) * 0.1)
    model.update(force=True)
    return model.eval()


@pytest.fixture(scope="module", params=VR_ARCHS)
def vr_entry(request, tmp_path_factory):
    arch = request.param
    out = tmp_path_factory.mktemp("vr") / arch
    save_entry(_vr_model(arch), out, arch=arch, quality=0, version="0.1")
    return arch, out


def test_folding_is_byte_identical_to_the_base_model_at_every_level(vr_entry):
    """Each level is a standard model of the base architecture: its state dict loads strict into a fresh
    base-class model, whose streams are byte for byte the variable-rate codec's."""
    import zoo

    arch, folder = vr_entry
    spec = get_arch(arch)
    vr, info = load_entry(folder)
    x = _image(36, 52)
    for level in LEVELS:
        codec = zoo.load_local(folder, quality=level)
        assert codec.entry == EntryId(arch, 0, "mse", "0.1", float(level))
        data = bitstream.dumps(codec.compress(x))
        base = get_arch(spec.base).model_class(N=16, M=24)
        base.load_state_dict(vr.fold(level).state_dict(), strict=True)
        assert type(base).__name__ == type(codec.model).__name__
        plain = Codec(base.eval(), codec.entry, info.fingerprint)
        assert bitstream.dumps(plain.compress(x)) == data, f"level {level}"
        if level == 2.5:
            x_hat = codec.decompress(bitstream.loads(data))
            assert torch.equal(x_hat, plain.decompress(bitstream.loads(data)))


def test_fold_computes_what_the_gained_network_computes(vr_entry):
    """The folded weights give the gained network's latents, entropy parameters and reconstruction (up to
    float rounding): folding moves the gains into the convolutions, it does not approximate them."""
    arch, folder = vr_entry
    vr, _ = load_entry(folder)
    x = _image(64, 64).unsqueeze(0)
    with torch.no_grad():
        for level in (1.0, 3.5, 8.0):
            folded = vr.fold(level)
            gy, iy, gz, iz = vr.gains(torch.tensor([level]))
            y = vr.g_a(x) * gy
            assert torch.allclose(folded.g_a(x), y, rtol=1e-5, atol=1e-5)
            z = vr.hyper_analysis(y) * gz
            assert torch.allclose(folded.hyper_analysis(y), z, rtol=1e-5, atol=1e-5)
            z_hat = torch.round(z)
            assert torch.allclose(folded.h_s(z_hat), vr.h_s(z_hat * iz), rtol=1e-4, atol=1e-5)
            y_hat = torch.round(y)
            assert torch.allclose(folded.g_s(y_hat), vr.g_s(y_hat * iy), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", VR_ARCHS)
def test_a_folded_level_has_compressai_names_and_shapes(arch):
    from tests.support import fixture_state_dict

    base = get_arch(arch).base
    assert base is not None
    theirs = fixture_state_dict(base)  # CompressAI's own state dict of the base class (N=32, M=48)
    model = create_model(arch, N=32, M=48)
    model.update(force=True)
    ours = model.fold(4.5).state_dict()
    skip = ("_quantized_cdf", "_offset", "_cdf_length")  # table sizes depend on the trained weights
    assert {k for k in ours if not k.endswith(skip)} == {k for k in theirs if not k.endswith(skip)}
    assert all(ours[k].shape == theirs[k].shape for k in ours if not k.endswith(skip))


def test_gains_interpolate_log_linearly_and_exactly_at_integers():
    model = _vr_model("bmshj2018-hyperprior-vr")
    g2, i2 = model.y_gain.at(2)
    g3, i3 = model.y_gain.at(3)
    g25, i25 = model.y_gain.at(2.5)
    assert torch.allclose(g25, (g2 * g3).sqrt()) and torch.allclose(i25, (i2 * i3).sqrt())
    assert torch.equal(g2, model.y_gain.log_gain[1].double().exp())
    assert torch.equal(model.y_gain.at(8)[0], model.y_gain.log_gain[7].double().exp())
    lam = get_arch("bmshj2018-hyperprior-vr").lmbda
    assert lam(3, "mse") == LAMBDAS["mse"][2]
    assert math.isclose(lam(3.5, "mse"), math.sqrt(LAMBDAS["mse"][2] * LAMBDAS["mse"][3]))
    for bad in (0.5, 8.01):  # numbers, but no level the entry has
        with pytest.raises(EntryNotFound):
            model.fold(bad)
    for bad in (float("nan"), "x"):  # not a level at all: bad input
        with pytest.raises(InputError):
            model.fold(bad)


def test_header_carries_the_level_and_refuses_a_bad_one(vr_entry, tmp_path):
    import zoo
    from zoo.cli import main

    arch, folder = vr_entry
    if get_arch(arch).autoregressive:
        pytest.skip("one architecture is enough for the header")
    codec = zoo.load_local(folder, quality=3.25)
    c = codec.compress(_image())
    data = bitstream.dumps(c)
    back = bitstream.loads(data)
    assert back.entry.level == 3.25 and back.extra == ()
    header = bitstream.peek_header(data).as_dict()
    assert header["entry"]["level"] == 3.25 and header["entry"]["quality"] == 0
    # another level's codec refuses the stream: the level is part of the codec's identity
    with pytest.raises(BitstreamError, match="made by"):
        zoo.load_local(folder, quality=3.5).decompress(back)
    with pytest.raises(BitstreamError, match="reserved"):
        bitstream.dumps(type(c)(**{**c.__dict__, "extra": (("zoo.level", "2"),)}))
    with pytest.raises(BitstreamError, match="level"):  # format 3 refuses to write such a level at all
        bitstream.loads(bitstream.dumps(type(c)(**{**c.__dict__, "entry": EntryId(arch, 0, "mse", "0.1", 1e9)})))
    path = tmp_path / "a.zoo"
    path.write_bytes(data)
    assert main(["info", str(path)]) == 0


def test_cli_encode_decode_eval_and_export_at_a_fractional_level(vr_entry, tmp_path, capsys):
    from PIL import Image

    import zoo
    from zoo.cli import main
    from zoo.imageio import read_image

    arch, folder = vr_entry
    if arch != "bmshj2018-hyperprior-vr":
        pytest.skip("the CLI paths do not depend on the architecture")
    src = tmp_path / "img.png"
    Image.fromarray((_image(96, 128).permute(1, 2, 0).numpy() * 255).round().astype("uint8")).save(src)
    out, png = tmp_path / "img.zoo", tmp_path / "back.png"
    assert main(["encode", str(src), str(out), "--model", str(folder), "--quality", "2.5", "--quiet"]) == 0
    assert bitstream.loads(out.read_bytes()).entry.level == 2.5
    assert main(["decode", str(out), str(png), "--model", str(folder), "--quiet"]) == 0
    expected = zoo.load_local(folder, quality=2.5).decompress(bitstream.loads(out.read_bytes()))
    assert torch.allclose(read_image(png)[0], expected[0], atol=0.5 / 255)
    assert main(["encode", str(src), str(out), "--model", str(folder), "--quality", "9"]) == 2
    assert "outside the levels" in capsys.readouterr().err

    dataset = tmp_path / "ds"
    dataset.mkdir()
    (dataset / "a.png").write_bytes(src.read_bytes())
    report = tmp_path / "eval.json"
    args = ["eval", "--model", str(folder), "--dataset", str(dataset), "--quality", "2.5,4", "--json", str(report)]
    assert main([*args, "--quiet"]) == 0
    results = json.loads(report.read_text())["results"]
    assert results["quality"] == [2.5, 4.0] and len(results["bpp"]) == 2

    graphs = tmp_path / "graphs"
    assert main(["export", str(folder), "--quality", "2.5", "--out", str(graphs)]) == 0
    meta = json.loads((graphs / "metadata.json").read_text())
    assert meta["level"] == 2.5 and meta["entry"]["arch"] == arch
    pytest.importorskip("onnxruntime")
    onnx = zoo.load_local(folder, quality=2.5, backend="onnx")
    assert torch.allclose(onnx.decompress(bitstream.loads(out.read_bytes())), expected, atol=2e-3)


def test_manifest_current_entry_serves_the_base_architecture():
    from zoo.hub import ManifestEntry, resolve_point

    def line(arch, quality, version, **kw):
        return ManifestEntry(arch, quality, "mse", version, f"o/{arch}", f"v{version}", {}, **kw)

    manifest = [
        line("bmshj2018-hyperprior", 3, "1.1"),
        line("bmshj2018-hyperprior", 7, "1.0"),
        line("bmshj2018-hyperprior-vr", 0, "1.0", current_for=[1, 2, 3, 4, 5, 6]),
        line("bmshj2018-hyperprior-vr", 0, "0.9", current_for=[1, 2, 3, 4, 5, 6, 7, 8]),
    ]
    point = resolve_point("bmshj2018-hyperprior", 3, manifest=manifest)
    assert (point.entry.arch, point.entry.version, point.level) == ("bmshj2018-hyperprior-vr", "1.0", 3.0)
    # a quality the newest variable-rate entry is not current for falls to the one that is
    assert resolve_point("bmshj2018-hyperprior", 8, manifest=manifest).entry.version == "0.9"
    # a pinned version names a fixed-rate entry, as before
    pinned = resolve_point("bmshj2018-hyperprior", 3, version="1.1", manifest=manifest)
    assert (pinned.entry.arch, pinned.level) == ("bmshj2018-hyperprior", None)
    assert resolve_point("bmshj2018-hyperprior-vr", 3.5, manifest=manifest).level == 3.5
    assert resolve_point("bmshj2018-hyperprior-vr", 2, version="0.9", manifest=manifest).entry.version == "0.9"
    with pytest.raises(EntryNotFound):
        resolve_point("bmshj2018-hyperprior-vr", 9, manifest=manifest)
    with pytest.raises(EntryNotFound):
        resolve_point("bmshj2018-hyperprior", 2.5, manifest=manifest)


def test_release_chooses_the_qualities_a_variable_rate_entry_serves():
    """--current-for auto: a level serves its quality where no fixed-rate entry exists, or where it is at least
    as good as the fixed-rate ladder at its own rate; a level below the ladder does not."""
    from zoo.hub import ManifestEntry
    from zoo.train.release import choose_current_for

    def fixed(quality, bpp, psnr, version="1.0"):
        return ManifestEntry(
            "bmshj2018-hyperprior", quality, "mse", version, "o/r", "v", {}, kodak={"bpp": bpp, "psnr": psnr}
        )

    ladder = [fixed(1, 0.2, 26.0), fixed(2, 0.3, 27.0), fixed(2, 0.3, 26.5, "0.9"), fixed(3, 0.4, 28.0)]
    levels = {
        "1": {"bpp": 0.25, "psnr": 26.6},  # above the ladder between q1 and q2 (26.55 at 0.25 bpp)
        "2": {"bpp": 0.30, "psnr": 26.9},  # below the newest q2 (27.0), above the older one: not current
        "3": {"bpp": 0.45, "psnr": 27.9},  # beyond the ladder and not dominating q3: not current
        "4": {"bpp": 0.60, "psnr": 28.5},  # no fixed-rate q4: current
        "5": {"bpp": 0.80, "psnr": 29.0},
    }
    assert choose_current_for("bmshj2018-hyperprior-vr", "mse", levels, ladder) == [1, 4, 5]
    levels["3"] = {"bpp": 0.39, "psnr": 28.1}  # dominates q3
    assert choose_current_for("bmshj2018-hyperprior-vr", "mse", levels, ladder) == [1, 3, 4, 5]
    assert choose_current_for("bmshj2018-hyperprior-vr", "mse", levels, []) == [1, 2, 3, 4, 5]
    # a quality with no fixed-rate entry is not served by a level below what the quality under it serves
    levels["4"] = {"bpp": 0.60, "psnr": 27.9}
    assert choose_current_for("bmshj2018-hyperprior-vr", "mse", levels, ladder) == [1, 3, 5]
    # beyond the ladder's top a level is compared with the ladder extended along its last segment
    # (q2 -> q3: +1 dB over log(4/3), so 28.41 dB at 0.45 bpp)
    levels = {"1": {"bpp": 0.25, "psnr": 26.6}, "2": {"bpp": 0.32, "psnr": 27.3}, "3": {"bpp": 0.45, "psnr": 28.5}}
    assert choose_current_for("bmshj2018-hyperprior-vr", "mse", levels, ladder) == [1, 2, 3]
    # the served ladder stays monotone: once q2 is served by a level above the fixed q3, q3 is served by its
    # level even though that level is below the ladder's trend (the fixed q3 would go down in bpp and PSNR)
    levels = {"2": {"bpp": 0.42, "psnr": 28.3}, "3": {"bpp": 0.55, "psnr": 28.6}}
    assert choose_current_for("bmshj2018-hyperprior-vr", "mse", levels, ladder) == [2, 3]


def test_warm_start_from_a_fixed_rate_entry_reproduces_it_at_its_level(fixture_entry):
    """--init from a fixed-rate entry of the base architecture: every weight taken, and the source's own
    quality (1 here) folds back into exactly the source model."""
    from zoo.train.trainer import load_init_weights

    model = create_model("bmshj2018-hyperprior-vr", N=32, M=48)
    load_init_weights(model, str(fixture_entry))
    source, _ = load_entry(fixture_entry)
    folded = model.fold(1).state_dict()
    for k, v in source.state_dict().items():
        if not k.endswith(("_quantized_cdf", "_offset", "_cdf_length")):
            assert torch.allclose(folded[k], v, rtol=1e-6, atol=1e-7), k
    # higher levels start with larger gains (finer quantization)
    gains = [float(model.y_gain.at(q)[0].mean()) for q in range(1, 9)]
    assert gains == sorted(gains)


@pytest.mark.slow
def test_short_training_run_gives_monotone_levels_on_a_kodak_crop(tmp_path):
    import zoo
    from zoo.imageio import read_image
    from zoo.train.trainer import TrainConfig, train

    train_dir, val_dir = tmp_path / "train", tmp_path / "val"
    train_dir.mkdir()
    val_dir.mkdir()
    for name in ("001.png", "002.png", "003.png"):
        (train_dir / name).symlink_to(photo_path(name))
    (val_dir / "036.png").symlink_to(photo_path("036.png"))
    run = tmp_path / "run"
    cfg = TrainConfig(
        arch="bmshj2018-hyperprior-vr",
        quality=0,
        train_dir=str(train_dir),
        val_dir=str(val_dir),
        out=str(run),
        steps=30,
        batch_size=4,
        patch=128,
        lr=3e-4,
        val_every=30,
        workers=0,
        widths={"N": 32, "M": 48},
        val_max_side=128,
        val_levels=(1, 4, 8),
        quiet=True,
    )
    train(cfg)
    phases = [line.split(",")[1] for line in (run / "log.csv").read_text().splitlines()[1:]]
    assert {"val-q1", "val-q4", "val-q8", "val"} <= set(phases)
    from zoo.train.release import release as do_release

    entry = tmp_path / "entry"
    info = do_release(run, "0.1", entry, checkpoint="last.pt")
    assert info.entry.arch == "bmshj2018-hyperprior-vr" and set(info.levels) == {str(q) for q in range(1, 9)}
    x, _ = read_image(kodak_path("kodim23.png"))
    crop = x[:, 128:256, 256:448]
    sizes = [len(bitstream.dumps(zoo.load_local(entry, quality=q).compress(crop))) for q in range(1, 9)]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1], sizes
    # released with an evaluation: every level's figures, measured on real files, in the config and the card
    from PIL import Image

    from zoo.entry import read_config
    from zoo.imageio import to_uint8

    evalset = tmp_path / "eval"
    evalset.mkdir()
    Image.fromarray(to_uint8(crop)).save(evalset / "crop.png")
    # through the CLI into a manifest of its own: with no fixed-rate ladder there, --current-for auto serves
    # quality 1 at least (against the package's ladder this tiny model would serve nothing)
    from zoo.cli import main

    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"format": 1, "org": "zoo-codecs", "entries": []}))
    argv = ["release", str(run), "--version", "0.2", "--out", str(tmp_path / "evaluated"), "--checkpoint", "last.pt"]
    argv += ["--eval", str(evalset), "--manifest", str(manifest), "--repo-root", str(tmp_path), "--current-for", "auto"]
    assert main(argv) == 0
    (line,) = json.loads(manifest.read_text())["entries"]
    assert 1 in line["current_for"] and set(line["levels"]) == {str(q) for q in range(1, 9)}
    levels = read_config(tmp_path / "evaluated").levels
    assert [levels[str(q)]["kodak"]["bpp"] for q in range(1, 9)] == pytest.approx([8 * n / (128 * 192) for n in sizes])
    assert "| 8 |" in (tmp_path / "evaluated" / "README.md").read_text()


def test_widen_grows_a_variable_rate_checkpoint_and_keeps_its_reconstruction():
    from zoo.train.trainer import load_init_weights

    narrow = _vr_model("bmshj2018-hyperprior-vr")
    path = Path(tempfile.mkdtemp()) / "narrow.pt"
    torch.save({"model": narrow.state_dict()}, path)
    wide = create_model("bmshj2018-hyperprior-vr", N=32, M=48)
    load_init_weights(wide, str(path), widen=True)
    assert torch.equal(wide.y_gain.log_gain[:, :24], narrow.y_gain.log_gain)
    x = _image(64, 64).unsqueeze(0)
    with torch.no_grad():
        for level in (1.5, 6.0):
            a, b = narrow.fold(level), wide.fold(level)
            y_hat = torch.round(a.g_a(x))
            pad = 5 * torch.randn(1, 24, *y_hat.shape[-2:])  # new channels must not matter yet
            assert torch.allclose(a.g_s(y_hat), b.g_s(torch.cat([y_hat, pad], 1)), atol=1e-5)


@pytest.mark.parametrize("arch", VR_ARCHS[:2])
def test_folding_on_another_device_matches_the_cpu(arch):
    """Training validates on the training device: `fold` of a model on a GPU must build its level tensors
    there (a CPU one failed on the first lent H100). tests/device_sim.py stands in for the GPU."""
    import copy

    from tests.device_sim import SimTensor, simulated_device, to_simulated_device

    cpu = _vr_model(arch)
    model = to_simulated_device(copy.deepcopy(cpu))
    with simulated_device():
        folded = {k: v.cpu() if isinstance(v, SimTensor) else v for k, v in model.fold(2.5).state_dict().items()}
        gain, inverse = model.y_gain.at(6.75)
    for k, v in cpu.fold(2.5).state_dict().items():
        assert torch.equal(folded[k], v), k
    ref_gain, ref_inverse = cpu.y_gain.at(6.75)
    assert torch.equal(gain.cpu(), ref_gain) and torch.equal(inverse.cpu(), ref_inverse)
