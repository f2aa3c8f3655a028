"""Evaluation: file-size bpp, independent PSNR, BD-rate sanity, and classical codecs equal to Pillow's own."""

from __future__ import annotations

import io
import json
import math
import shutil

import numpy as np
import pytest
from PIL import Image

from tests.support import KODAK
from zoo.cli import main
from zoo.errors import InputError
from zoo.evaluation.bd import bd_psnr, bd_rate
from zoo.evaluation.plot import reference_curves


@pytest.fixture(scope="module")
def two_images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("kodak2")
    for name in ("kodim05.png", "kodim23.png"):
        Image.open(KODAK / name).crop((0, 0, 256, 192)).save(folder / name)
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
    assert "skipped 1 non-image" in capsys.readouterr().err
    res = json.loads(out.read_text())
    assert set(res) == {"name", "description", "results"}
    assert set(res["results"]) >= {"bpp", "psnr-rgb", "ms-ssim-rgb", "encoding_time", "decoding_time"}
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
        main(["bench", "--codec", "jpeg", "--dataset", str(one), "--quality", "75", "--json", str(out), "--quiet"]) == 0
    )
    res = json.loads(out.read_text())["results"]
    buf = io.BytesIO()
    Image.open(one / "kodim23.png").convert("RGB").save(buf, format="JPEG", quality=75, subsampling="4:2:0")
    assert res["bpp"][0] == pytest.approx(8 * len(buf.getvalue()) / (256 * 192), rel=1e-12)


def test_bd_command(tmp_path, capsys):
    assert main(["bd", "jpeg", "compressai-bmshj2018-hyperprior_mse_cuda"]) == 0
    line = capsys.readouterr().out
    assert line.startswith("BD-rate -")
