"""Evaluation: file-size bpp, independent PSNR, BD-rate sanity, and classical codecs equal to Pillow's own."""

from __future__ import annotations

import io
import json
import math
import shutil

import numpy as np
import pytest
from PIL import Image

from tests.support import PASS_ARCHS, kodak_path
from zoo.cli import main
from zoo.errors import InputError
from zoo.evaluation.bd import bd_psnr, bd_rate
from zoo.evaluation.plot import reference_curves


@pytest.fixture(scope="module")
def two_images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("kodak2")
    for name in ("kodim05.png", "kodim23.png"):
        Image.open(kodak_path(name)).crop((0, 0, 256, 192)).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_eval_bpp_is_file_size_and_psnr_is_independent(two_images, fixture_entry, tmp_path, capsys):
    import zoo
    from zoo import bitstream

    out = tmp_path / "r.json"
    assert (
        main(
            [
                "eval",
                "--model",
                str(fixture_entry),
                "--dataset",
                str(two_images),
                "--json",
                str(out),
                "--plot",
                str(tmp_path / "rd.png"),
                "--reference",
                "jpeg",
            ]
        )
        == 0
    )
    printed = capsys.readouterr()
    assert "skipped 1 non-image" in printed.err
    assert "kodim05.png" in printed.out and "kodim23.png" in printed.out  # the per-image table
    res = json.loads(out.read_text())
    assert set(res) == {"name", "description", "results", "per_image"}
    assert set(res["results"]) >= {"bpp", "psnr-rgb", "ms-ssim-rgb", "encoding_time", "decoding_time"}
    assert res["name"] == "bmshj2018-hyperprior-mse@0.1"
    (run,) = res["per_image"]
    assert run["quality"] == 1 and run["entry"] == "bmshj2018-hyperprior/q1-mse@0.1"
    assert [r["image"] for r in run["images"]] == ["kodim05.png", "kodim23.png"]
    assert np.mean([r["bpp"] for r in run["images"]]) == pytest.approx(res["results"]["bpp"][0], rel=1e-12)
    codec = zoo.load_local(fixture_entry)
    bpps, psnrs = [], []
    for name in ("kodim05.png", "kodim23.png"):
        ref = np.asarray(Image.open(two_images / name).convert("RGB"))
        x = __import__("torch").from_numpy(ref.copy()).permute(2, 0, 1).float() / 255
        data = bitstream.dumps(codec.compress(x))
        bpps.append(8 * len(data) / (ref.shape[0] * ref.shape[1]))
        rec = np.clip(np.round(codec.decompress(bitstream.loads(data))[0].permute(1, 2, 0).numpy() * 255), 0, 255)
        mse = np.mean((rec - ref.astype(np.float64)) ** 2)
        psnrs.append(10 * math.log10(255**2 / mse))
    assert res["results"]["bpp"][0] == pytest.approx(np.mean(bpps), rel=1e-12)
    assert res["results"]["psnr-rgb"][0] == pytest.approx(np.mean(psnrs), rel=1e-9)
    assert (tmp_path / "rd.png").stat().st_size > 1000
    # Resume: per-image results are kept beside the JSON and reused.
    cache = list(out.with_suffix(".cache").glob("*.jsonl"))
    assert len(cache) == 1 and len(cache[0].read_text().splitlines()) == 2
    assert (
        main(["eval", "--model", str(fixture_entry), "--dataset", str(two_images), "--json", str(out), "--quiet"]) == 0
    )
    assert len(cache[0].read_text().splitlines()) == 2


@pytest.fixture(scope="module")
def small_images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("small")
    for name in ("kodim05.png", "kodim23.png"):
        Image.open(kodak_path(name)).crop((64, 64, 128, 128)).save(folder / name)
    return folder


def _eval(model, dataset, out, *extra):
    return main(["eval", "--model", str(model), "--dataset", str(dataset), "--json", str(out), "--quiet", *extra])


@pytest.mark.parametrize("arch", PASS_ARCHS)
def test_eval_context_models_bpp_is_file_size(small_images, arch_entry, arch, tmp_path):
    import torch

    import zoo
    from zoo import bitstream

    out, entry = tmp_path / "r.json", arch_entry(arch)
    assert _eval(entry, small_images, out) == 0
    res = json.loads(out.read_text())
    codec, bpps = zoo.load_local(entry), []
    for name in ("kodim05.png", "kodim23.png"):
        ref = np.asarray(Image.open(small_images / name).convert("RGB"))
        data = bitstream.dumps(codec.compress(torch.from_numpy(ref.copy()).permute(2, 0, 1).float() / 255))
        bpps.append(8 * len(data) / (ref.shape[0] * ref.shape[1]))
    assert res["results"]["bpp"][0] == pytest.approx(np.mean(bpps), rel=1e-12)
    assert res["results"]["psnr-rgb"][0] > 15


def _variant(tmp_path, name, *, version, scale=1.0):
    """The fixture entry saved again under `tmp_path/name/hyperprior` (the same folder name as the session
    fixture), at another version and/or with the synthesis transform's last layer scaled."""
    import copy

    import torch

    from tests.support import fixture_model
    from zoo.entry import save_entry

    model = copy.deepcopy(fixture_model("bmshj2018-hyperprior"))
    with torch.no_grad():
        model.g_s[-1].weight.mul_(scale)
    out = tmp_path / name / "hyperprior"
    save_entry(model, out, arch="bmshj2018-hyperprior", quality=1, version=version, training={"dataset": "fixture"})
    return out


def test_eval_resume_cache_is_keyed_by_entry_version_and_weights(small_images, fixture_entry, tmp_path):
    retrained = _variant(tmp_path, "retrained", version="0.1", scale=0.5)  # same name and version, new weights
    bumped = _variant(tmp_path, "bumped", version="0.2")  # same weights, new version
    out = tmp_path / "r.json"
    psnr = {}
    for key, entry in (("orig", fixture_entry), ("retrained", retrained), ("bumped", bumped)):
        assert _eval(entry, small_images, out) == 0
        psnr[key] = json.loads(out.read_text())["results"]["psnr-rgb"][0]
    assert len(list(out.with_suffix(".cache").glob("*.jsonl"))) == 3
    # The retrained entry's figures are its own, as a run without any cache computes them.
    assert psnr["retrained"] != pytest.approx(psnr["orig"], abs=0.01)
    assert _eval(retrained, small_images, tmp_path / "fresh.json") == 0
    assert psnr["retrained"] == json.loads((tmp_path / "fresh.json").read_text())["results"]["psnr-rgb"][0]
    assert psnr["bumped"] == pytest.approx(psnr["orig"], rel=1e-9)

    # Several versions of one architecture in one run get distinct labels.
    both = tmp_path / "both.json"
    models = [str(m) for m in (fixture_entry, bumped, retrained)]
    assert main(["eval", "--model", *models, "--dataset", str(small_images), "--json", str(both), "--quiet"]) == 0
    names = [r["name"] for r in json.loads(both.read_text())]
    assert names[:2] == ["bmshj2018-hyperprior-mse@0.1", "bmshj2018-hyperprior-mse@0.2"]
    assert len(set(names)) == 3


def test_eval_skips_corrupt_image_files(small_images, fixture_entry, tmp_path, capsys):
    folder = tmp_path / "data"
    shutil.copytree(small_images, folder)
    (folder / "broken.png").write_bytes(b"not a PNG at all")
    (folder / "cut.png").write_bytes((small_images / "kodim05.png").read_bytes()[:100])
    out = tmp_path / "r.json"
    assert main(["eval", "--model", str(fixture_entry), "--dataset", str(folder), "--json", str(out)]) == 0
    err = capsys.readouterr().err
    assert "skipped 2 unreadable image files" in err and err.count("unreadable") == 1
    res = json.loads(out.read_text())
    assert [r["image"] for r in res["per_image"][0]["images"]] == ["kodim05.png", "kodim23.png"]
    assert res["per_image"][0]["skipped"] == ["broken.png", "cut.png"]

    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    (only_bad / "broken.png").write_bytes(b"not a PNG at all")
    assert main(["eval", "--model", str(fixture_entry), "--dataset", str(only_bad), "--quiet"]) == 2
    assert "none of the 1 image files" in capsys.readouterr().err


def test_eval_quality_of_a_single_entry(small_images, fixture_entry, tmp_path, capsys):
    out = tmp_path / "r.json"
    for quality in ("1", "1-8"):
        assert _eval(fixture_entry, small_images, out, "--quality", quality) == 0
        res = json.loads(out.read_text())
        assert res["results"]["quality"] == [1] and len(res["per_image"]) == 1
    assert _eval(fixture_entry, small_images, out, "--quality", "2-3") == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "quality 1" in err and "2-3" in err

    # A checkpoint does not know its quality: one number labels it, a range is refused.
    import torch

    from tests.support import fixture_state_dict

    ckpt = tmp_path / "hyperprior.pth"
    torch.save(fixture_state_dict("bmshj2018-hyperprior"), ckpt)
    arch = ("--arch", "bmshj2018-hyperprior")
    assert _eval(ckpt, small_images, out, *arch, "--quality", "4") == 0
    assert json.loads(out.read_text())["results"]["quality"] == [4]
    assert _eval(ckpt, small_images, out, *arch, "--quality", "1-8") == 2
    assert "one checkpoint" in capsys.readouterr().err


def test_eval_takes_train_py_checkpoints_with_ddp_prefixes(small_images, tmp_path):
    """eval reads checkpoints with the importer's reader: {"state_dict": ...} with "module." prefixes loads."""
    import torch

    from tests.support import fixture_state_dict

    sd = fixture_state_dict("bmshj2018-hyperprior")
    plain, ddp = tmp_path / "plain.pth", tmp_path / "ddp.pth.tar"
    torch.save(sd, plain)
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in sd.items()}}, ddp)
    results = []
    for ckpt in (plain, ddp):
        out = tmp_path / f"{ckpt.stem}.json"
        assert _eval(ckpt, small_images, out, "--arch", "bmshj2018-hyperprior", "--quality", "1") == 0
        images = json.loads(out.read_text())["per_image"][0]["images"]
        results.append([(i["image"], i["psnr"]) for i in images])  # the header names the file: sizes differ
    assert results[0] == results[1]


def test_eval_registry_quality_range_uses_released_entries(tmp_path, monkeypatch, small_images, capsys):
    from tests.conftest import write_manifest
    from zoo.cli.eval_cmds import parse_qualities, released_qualities

    def entry(q, version="1.0"):
        return {
            "arch": "bmshj2018-hyperprior",
            "quality": q,
            "metric": "mse",
            "version": version,
            "repo": "zoo-test/x",
            "revision": "main",
            "files": {},
        }

    monkeypatch.setenv("ZOO_MANIFEST", str(write_manifest(tmp_path / "m.json", [entry(1), entry(3), entry(3, "2")])))
    assert released_qualities("bmshj2018-hyperprior", parse_qualities("1-8"), "mse", None) == (
        [1, 3],
        [2, 4, 5, 6, 7, 8],
    )
    assert released_qualities("bmshj2018-hyperprior", parse_qualities("3"), "mse", "2") == ([3], [])
    # None released: one clear error, before anything is loaded or downloaded.
    assert main(["eval", "--model", "bmshj2018-hyperprior", "--quality", "4-6", "--dataset", str(small_images)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "released: q1-mse@1.0, q3-mse@1.0, q3-mse@2" in err
    with pytest.raises(InputError):
        parse_qualities("5-2")


def test_bd_rate_sanity():
    r = [0.1, 0.25, 0.5, 0.9, 1.5]
    d = [27.0, 29.5, 32.0, 34.5, 37.0]
    assert bd_rate(r, d, r, d) == pytest.approx(0.0, abs=1e-9)
    assert bd_rate(r, d, [x * 0.9 for x in r], d) == pytest.approx(-10.0, abs=0.5)
    assert bd_psnr(r, d, r, [x + 0.3 for x in d]) == pytest.approx(0.3, abs=1e-6)
    with pytest.raises(InputError):
        bd_rate(r, d, r, [x + 50 for x in d])
    jpeg = reference_curves(["jpeg"])["jpeg"]
    assert len(jpeg) >= 5


def test_bench_jpeg_equals_pillow(two_images, tmp_path):
    out = tmp_path / "jpeg.json"
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(two_images / "kodim23.png", one)
    assert (
        main(
            [
                "bench",
                "--codec",
                "jpeg",
                "--dataset",
                str(one),
                "--quality",
                "75,90",
                "--json",
                str(out),
                "--quiet",
                "--plot",
                str(tmp_path / "ms.png"),
                "--plot-metric",
                "ms-ssim",
            ]
        )
        == 0  # fmt: skip
    )
    assert (tmp_path / "ms.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = json.loads(out.read_text())["results"]
    buf = io.BytesIO()
    Image.open(one / "kodim23.png").convert("RGB").save(buf, format="JPEG", quality=75, subsampling="4:2:0")
    assert res["bpp"][0] == pytest.approx(8 * len(buf.getvalue()) / (256 * 192), rel=1e-12)


def test_bd_command(tmp_path, capsys):
    assert main(["bd", "jpeg", "compressai-bmshj2018-hyperprior_mse_cuda"]) == 0
    line = capsys.readouterr().out
    assert line.startswith("BD-rate -")


def test_eval_effort_measures_refined_files_under_their_own_cache(small_images, fixture_entry, tmp_path):
    """`zoo eval --effort 1`: bpp from the refined files (the fixture's cost drops), its own cache file and
    label, so effort 0 figures are never reused for it."""
    import torch

    from zoo.refine import entry_objective

    out0, out1 = tmp_path / "e0.json", tmp_path / "e1.json"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert _eval(fixture_entry, small_images, out0) == 0
        assert _eval(fixture_entry, small_images, out1, "--effort", "1") == 0
    finally:
        torch.set_num_threads(threads)
    r0, r1 = json.loads(out0.read_text()), json.loads(out1.read_text())
    assert r1["name"].endswith("effort 1") and r1["name"] != r0["name"]
    import zoo

    lam = entry_objective(zoo.load_local(fixture_entry).entry).lmbda

    def cost(r):  # a proxy of the mean R + λD from the mean bpp and PSNR (MSE of [0, 1] pixels)
        return r["results"]["bpp"][0] + lam * 255**2 * 10 ** (-r["results"]["psnr-rgb"][0] / 10)

    assert cost(r1) < cost(r0)
    assert len(list(out1.with_suffix(".cache").glob("*-effort1.jsonl"))) == 1


def test_regenerating_the_results_report_keeps_the_sections_other_benchmarks_wrote(tmp_path):
    """benchmarks/rd_report.py rewrites docs/results.md from scratch; the effort figures that
    benchmarks/effort.py measured (hours of CPU) sit between kept markers and must survive it."""
    import importlib.util

    from tests.support import REPO

    spec = importlib.util.spec_from_file_location("rd_report", REPO / "benchmarks" / "rd_report.py")
    assert spec and spec.loader
    rd_report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rd_report)
    old = tmp_path / "results.md"
    old.write_text(
        "# Kodak results\n\nregenerated part\n\n<!-- kept:effort -->\n## Encoder effort\n\n| a | b |\n"
        "<!-- /kept:effort -->\n\n<!-- kept:other -->\nmore\n<!-- /kept:other -->\n<!-- kept:open -->\nno end\n"
    )
    kept = rd_report.kept_sections(old)
    assert kept == [
        "",
        "<!-- kept:effort -->\n## Encoder effort\n\n| a | b |\n<!-- /kept:effort -->",
        "",
        "<!-- kept:other -->\nmore\n<!-- /kept:other -->",
    ]
    assert rd_report.kept_sections(tmp_path / "absent.md") == []
