"""`zoo compare` (zoo/evaluation/compare.py, zoo/cli/compare_cmds.py): the page and every file it shows exist, and
the numbers on the page are those of the files: sizes within the budget, bpp from bytes and pixels, PSNR from
the PNGs, each PNG the decoding of its coded file."""

from __future__ import annotations

import io
import json
import math
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support import REPO, SAMPLE
from zoo.cli import main
from zoo.evaluation.compare import classical_at_size
from zoo.evaluation.metrics import ms_ssim_rgb, psnr_rgb
from zoo.registry import get_arch

VR_ENTRY = REPO / "model_store/entries/bmshj2018-hyperprior-vr/mse/v1.12"
BUDGET = 2600


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def crop(tmp_path_factory) -> Path:
    # 192x176: small, yet over 160 pixels a side so that MS-SSIM is defined
    path = tmp_path_factory.mktemp("compare") / "crop.png"
    Image.open(SAMPLE).convert("RGB").crop((300, 100, 492, 276)).save(path)
    return path


class _Page(HTMLParser):
    """The panels of a compare page: each figure's data-* attributes and the text of its cells by class."""

    def __init__(self) -> None:
        super().__init__()
        self.panels: list[dict[str, str]] = []
        self.images: list[str] = []
        self._cell: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "figure":
            self.panels.append({k: v for k, v in a.items() if k.startswith("data-")})
        elif tag == "img":
            self.images.append(a["src"])
        elif tag == "td" and self.panels:
            self._cell = a.get("class")

    def handle_data(self, data):
        if self._cell:
            self.panels[-1][f"text-{self._cell}"] = data.strip()

    def handle_endtag(self, tag):
        if tag == "td":
            self._cell = None


def _rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def page(crop, tmp_path_factory) -> tuple[Path, _Page]:
    results = tmp_path_factory.mktemp("results") / "jpeg.json"
    curve = {"quality": [10, 50], "bpp": [0.4, 1.2], "psnr-rgb": [27.0, 33.0], "ms-ssim-rgb": [0.9, 0.97]}
    results.write_text(json.dumps({"name": "jpeg", "description": "test", "results": curve}))
    out = tmp_path_factory.mktemp("page")
    argv = ["compare", str(crop), "--max-bytes", str(BUDGET), "--models", str(VR_ENTRY), "--out", str(out)]
    assert main([*argv, "--eval", str(results), "--quiet"]) == 0
    parsed = _Page()
    parsed.feed((out / "index.html").read_text(encoding="utf-8"))
    return out, parsed


def test_the_page_shows_the_original_the_entry_and_the_classical_codecs(page):
    out, parsed = page
    assert [p["data-name"] for p in parsed.panels] == ["original", "bmshj2018-hyperprior-vr", "jpeg", "webp", "avif"]
    for src in parsed.images:
        assert (out / src).is_file(), src
    assert "rd.png" in parsed.images
    assert _rgb(out / "rd.png").shape[2] == 3


def test_every_number_on_the_page_is_that_of_its_files(page, crop):
    out, parsed = page
    original = _rgb(out / "original.png")
    assert np.array_equal(original, _rgb(crop))
    h, w = original.shape[:2]
    for p in parsed.panels[1:]:
        size = (out / p["data-coded"]).stat().st_size
        assert int(p["data-bytes"]) == int(p["text-bytes"]) == size <= BUDGET
        assert size >= 0.8 * BUDGET, p  # the search used the budget, not a token of it
        assert p["data-bpp"] == p["text-bpp"] == f"{8 * size / (h * w):.4f}"
        reconstruction = _rgb(out / p["data-png"])
        assert p["data-psnr"] == f"{psnr_rgb(original, reconstruction):.2f}"
        assert p["text-psnr"] == f"{p['data-psnr']} dB"
        assert p["data-ms-ssim"] == p["text-ms-ssim"] == f"{ms_ssim_rgb(original, reconstruction):.4f}"


def test_each_png_is_the_decoding_of_its_coded_file(page, tmp_path):
    out, parsed = page
    for p in parsed.panels[1:]:
        coded, png = out / p["data-coded"], _rgb(out / p["data-png"])
        if coded.suffix == ".zoo":
            decoded = tmp_path / "decoded.png"
            assert main(["decode", str(coded), str(decoded), "--model", str(VR_ENTRY), "--quiet"]) == 0
            assert np.array_equal(_rgb(decoded), png)
        else:
            assert np.array_equal(np.asarray(Image.open(io.BytesIO(coded.read_bytes())).convert("RGB")), png)


def test_a_target_bpp_is_a_budget_in_bytes_and_an_earlier_page_is_replaced(crop, tmp_path, capsys):
    out = tmp_path / "page"
    out.mkdir()
    (out / "07-jpeg.png").write_bytes(b"an earlier page's panel")
    (out / "notes.txt").write_text("the user's own file")
    argv = ["compare", str(crop), "--target-bpp", "0.5", "--models", "--classical", "webp", "--out", str(out)]
    assert main(argv) == 0
    parsed = _Page()
    parsed.feed((out / "index.html").read_text(encoding="utf-8"))
    (webp,) = parsed.panels[1:]
    assert int(webp["data-bytes"]) <= 0.5 * 192 * 176 / 8
    assert "webp quality" in capsys.readouterr().out
    assert not (out / "07-jpeg.png").exists() and (out / "notes.txt").is_file()


def test_a_codec_that_cannot_fit_says_why_and_the_others_still_run(crop):
    rgb = _rgb(crop)
    failed = classical_at_size("jpeg", rgb, 200)  # JPEG's headers alone are larger
    assert failed.failure.startswith("even the lowest setting (1) makes a file of") and not failed.data
    fitted = classical_at_size("webp", rgb, 2000)
    assert not fitted.failure and len(fitted.data) <= 2000
    assert math.isfinite(psnr_rgb(rgb, fitted.reconstruction))


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "needs a budget"),
        (["--max-bytes", "20"], "no codec fits the budget"),
        (["--max-bytes", "0"], "positive whole number of bytes"),
        (["--max-bytes", "2000", "--eval", "missing.json"], "cannot read missing.json"),
    ],
)
def test_bad_requests_are_one_line_and_exit_2(crop, tmp_path, capsys, extra, message):
    argv = ["compare", str(crop), "--models", str(VR_ENTRY), "--out", str(tmp_path / "page"), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("zoo: error:") and message in err and err.count("\n") == 1


def test_the_default_models_are_served_variable_rate_architectures():
    from zoo.cli.compare_cmds import default_models

    models = default_models("mse")
    assert "bmshj2018-hyperprior-vr" in models
    assert all(get_arch(m).variable_rate for m in models)
