"""`zoo encode DIR OUT` / `zoo decode DIR OUT`: every file through the single-file path, in worker processes,
resumable, one bad file reported while the rest go on, and a summary."""

from __future__ import annotations

import json
import os
from pathlib import Path

from PIL import Image

from tests.support import kodak_path
from zoo.cli import main


def _images(root: Path) -> list[Path]:
    """Three small crops of Kodak images, one in a subfolder, and a file named .png that is not an image."""
    (root / "sub").mkdir(parents=True)
    made = []
    sources = (("kodim01.png", "a.png"), ("kodim05.png", "b.jpg"), ("kodim23.png", "sub/c.png"))
    for i, (name, where) in enumerate(sources):
        img = Image.open(kodak_path(name)).crop((64 * i, 64, 64 * i + 80, 112)).convert("RGB")
        img.save(root / where, quality=95)
        made.append(root / where)
    (root / "sub" / "broken.png").write_bytes(b"not an image")
    return made


def _summary(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


def test_folder_encode_equals_single_files_and_goes_on_past_a_bad_one(tmp_path, fixture_entry, capsys):
    images = _images(tmp_path / "in")
    out = tmp_path / "out"
    args = ["encode", str(tmp_path / "in"), str(out), "--model", str(fixture_entry), "--workers", "2", "--json"]
    assert main(args) == 1  # a file failed
    summary = _summary(capsys)
    assert (summary["found"], summary["coded"], summary["skipped"]) == (4, 3, 0)
    assert [f["path"] for f in summary["failures"]] == [str(tmp_path / "in" / "sub" / "broken.png")]
    outputs = [out / "a.zoo", out / "b.zoo", out / "sub" / "c.zoo"]
    assert summary["total_bytes"] == sum(p.stat().st_size for p in outputs)
    mean_bpp = sum(8 * p.stat().st_size / (80 * 48) for p in outputs) / 3
    assert abs(summary["mean_bpp"] - mean_bpp) < 1e-9 and abs(summary["megapixels"] - 3 * 80 * 48 / 1e6) < 1e-9
    for image, output in zip(images, outputs, strict=True):
        single = tmp_path / "single.zoo"
        assert main(["encode", str(image), str(single), "--model", str(fixture_entry), "--quiet"]) == 0
        assert single.read_bytes() == output.read_bytes()


def test_a_rerun_skips_outputs_newer_than_their_inputs(tmp_path, fixture_entry, capsys):
    images = _images(tmp_path / "in")
    (tmp_path / "in" / "sub" / "broken.png").unlink()
    out = tmp_path / "out"
    args = ["encode", str(tmp_path / "in"), str(out), "--model", str(fixture_entry), "--json"]
    assert main(args) == 0
    assert _summary(capsys)["coded"] == 3
    assert main(args) == 0
    assert _summary(capsys)["coded"] == 0
    later = (out / "a.zoo").stat().st_mtime_ns + 10**9
    os.utime(images[0], ns=(later, later))  # the input changed after its output was written
    assert main(args) == 0
    summary = _summary(capsys)
    assert (summary["coded"], summary["skipped"]) == (1, 2)


def test_folder_decode_of_a_glob(tmp_path, fixture_entry, capsys):
    import numpy as np

    _images(tmp_path / "in")
    (tmp_path / "in" / "sub" / "broken.png").unlink()
    assert main(["encode", str(tmp_path / "in"), str(tmp_path / "z"), "--model", str(fixture_entry), "--quiet"]) == 0
    pattern = str(tmp_path / "z" / "**" / "*.zoo")
    assert main(["decode", pattern, str(tmp_path / "png"), "--model", str(fixture_entry), "--json"]) == 0
    assert _summary(capsys)["coded"] == 3
    single = tmp_path / "single.png"
    assert main(["decode", str(tmp_path / "z" / "sub" / "c.zoo"), str(single), "--model", str(fixture_entry)]) == 0
    batch = tmp_path / "png" / "sub" / "c.png"
    assert np.array_equal(np.asarray(Image.open(batch)), np.asarray(Image.open(single)))


def test_two_inputs_for_one_output_and_an_empty_folder(tmp_path, fixture_entry, capsys):
    src = tmp_path / "in"
    src.mkdir()
    crop = Image.open(kodak_path("kodim23.png")).crop((0, 0, 64, 64)).convert("RGB")
    crop.save(src / "x.png")
    crop.save(src / "x.jpg")
    assert main(["encode", str(src), str(tmp_path / "out"), "--model", str(fixture_entry), "--json"]) == 1
    summary = _summary(capsys)
    assert summary["coded"] == 1 and "already writes" in summary["failures"][0]["error"]
    (tmp_path / "empty").mkdir()
    assert main(["encode", str(tmp_path / "empty"), str(tmp_path / "o"), "--model", str(fixture_entry)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("zoo: error: no images"), err


def test_a_folder_under_a_size_budget_fits_every_file_and_loads_its_entry_once(tmp_path, capsys, monkeypatch):
    from tests.support import REPO
    from zoo import entry

    vr_entry = REPO / "model_store/entries/bmshj2018-hyperprior-vr/mse/v1.12"
    _images(tmp_path / "in")
    (tmp_path / "in" / "sub" / "broken.png").unlink()
    from zoo.cli import codec_cmds

    monkeypatch.setattr(codec_cmds, "_LADDERS", {})  # nothing built by an earlier test in this process
    loads = []
    real = entry.load_entry
    monkeypatch.setattr(entry, "load_entry", lambda *a, **k: loads.append(a) or real(*a, **k))
    out = tmp_path / "out"
    args = ["encode", str(tmp_path / "in"), str(out), "--model", str(vr_entry), "--max-bytes", "600", "--json"]
    assert main(args) == 0
    assert _summary(capsys)["coded"] == 3
    assert all(p.stat().st_size <= 600 for p in out.rglob("*.zoo"))
    assert len(loads) == 1  # one entry, read once for the whole folder
