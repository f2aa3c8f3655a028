"""The learning curve of docs/results.md: each release adds its point (scripts/learning_point.py, from the card),
and benchmarks/rd_report.py projects it on log2 core-hours."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from benchmarks.rd_report import projection, psnr_at
from tests.support import REPO
from zoo.entry import read_config
from zoo.hub import load_manifest, resolve_point
from zoo.mirror import entry_folder

SCRIPT = REPO / "scripts" / "learning_point.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=REPO)


def test_a_release_adds_its_point_from_its_card(tmp_path):
    entry = resolve_point("bmshj2018-hyperprior-vr", 3).entry
    folder = entry_folder(REPO / entry.path)
    card = read_config(folder)
    curve = tmp_path / "curve.json"
    curve.write_text(json.dumps([{"arch": "other", "curve": "v1.0", "cpu_hours": 1.0, "psnr_at_0.5": 27.0}]))

    for _ in range(2):  # a second run replaces the point instead of adding another
        done = _run("--curve", str(curve), str(folder))
        assert done.returncode == 0, done.stderr
    points = json.loads(curve.read_text())
    assert [p["arch"] for p in points] == ["other", "bmshj2018-hyperprior-vr"]
    p = points[-1]
    assert p["curve"] == f"v{entry.version}, every level"
    assert p["cpu_hours"] == pytest.approx(card.training["total_cpu_hours"], abs=0.005)
    assert p["gpu_minutes"] == pytest.approx(card.training.get("total_gpu_minutes", 0.0), abs=0.05)
    kodak = [lv["kodak"] for lv in card.levels.values()]
    want = psnr_at([k["bpp"] for k in kodak], [k["psnr"] for k in kodak])
    assert p["psnr_at_0.5"] == pytest.approx(want, abs=5e-4) and 25 < want < 40


def test_an_entry_without_a_curve_is_one_line_and_leaves_the_file(tmp_path):
    fixed = next(e for e in load_manifest() if e.arch == "bmshj2018-factorized")
    curve = tmp_path / "curve.json"
    curve.write_text("[]")
    for target in (str(entry_folder(REPO / fixed.path)), str(tmp_path / "missing")):
        done = _run("--curve", str(curve), target)
        assert done.returncode == 1
        assert len(done.stderr.strip().splitlines()) == 1 and "learning_point: error:" in done.stderr
    assert curve.read_text() == "[]"


def test_projection_reads_the_log2_line():
    """Points on PSNR = 28 + 0.5 log2(hours): 20 core-hours read 28 + 0.5 log2 20; the target (31.5 - 1.5 dB)
    needs 2^4."""
    arch = "bmshj2018-hyperprior-vr"
    pts = [{"arch": arch, "cpu_hours": h, "psnr_at_0.5": 28 + 0.5 * math.log2(h)} for h in (2, 4, 8)]
    pub = {"compressai-bmshj2018-hyperprior_mse_cuda": [[0.25, 30.0], [1.0, 33.0]]}  # 31.5 dB at 0.5 bpp
    (line,) = [x for x in projection(pts, pub) if x.startswith("- ")]
    assert "+0.50 dB per doubling" in line
    assert f"{28 + 0.5 * math.log2(20):.2f} dB" in line
    assert "30.00 dB" in line and "16 core-hours" in line


def test_projection_prices_the_rest_in_gpu_minutes():
    """A GPU point at the PSNR of 16 core-hours, with 8 of its own and 4 GPU minutes: a GPU minute was worth 2
    core-hours, and the target (at 2^6 = 64 core-hours on the line) needs (64 - 16) / 2 = 24 more minutes."""
    arch = "bmshj2018-hyperprior-vr"
    pts = [{"arch": arch, "cpu_hours": h, "psnr_at_0.5": 28 + 0.5 * math.log2(h)} for h in (2, 4, 8)]
    pts.append({"arch": arch, "curve": "v9", "cpu_hours": 8, "gpu_minutes": 4, "psnr_at_0.5": 30.0})
    pub = {"compressai-bmshj2018-hyperprior_mse_cuda": [[0.25, 29.5], [1.0, 32.5]]}  # 31.0 dB: 2^6 hours
    (gpu,) = [x for x in projection(pts, pub, margin_db=0.0) if "with the GPU" in x]
    assert "16.0 core-hours" in gpu and "worth about 2.00 core-hours" in gpu and "about 24 more GPU minutes" in gpu
    pts[-1]["psnr_at_0.5"] = 29.0  # below the line: no price
    (gpu,) = [x for x in projection(pts, pub, margin_db=0.0) if "with the GPU" in x]
    assert "not above the CPU line" in gpu


def test_projection_reads_the_cycles_since_the_gpu_on_their_own_line():
    """CPU cycles after the GPU's minutes on PSNR = 30 + 0.25 log2(hours / 8): the target (31 dB) needs 8 * 2^4 =
    128 core-hours, (128 - 32) / 1.1 = 87 GPU minutes from the last point. The GPU's price is read at the first
    point with its minutes (worth 2 core-hours a minute there); read at the last, the later cycles' shortfall
    against the early line would price it at nothing."""
    arch = "bmshj2018-hyperprior-vr"
    pts = [{"arch": arch, "cpu_hours": h, "psnr_at_0.5": 28 + 0.5 * math.log2(h)} for h in (2, 4, 8)]
    pts += [
        {"arch": arch, "curve": f"v{i}, every level", "cpu_hours": h, "gpu_minutes": 4, "psnr_at_0.5": d}
        for i, (h, d) in enumerate([(8, 30.0), (16, 30.25), (32, 30.5)])
    ]
    pub = {"compressai-bmshj2018-hyperprior_mse_cuda": [[0.25, 29.5], [1.0, 32.5]]}  # 31.0 dB at 0.5 bpp
    lines = projection(pts, pub, margin_db=0.0)
    (gpu,) = [x for x in lines if "with the GPU" in x]
    assert "v0, every level" in gpu and "worth about 2.00 core-hours" in gpu
    (since,) = [x for x in lines if "since the GPU" in x]
    assert "(v0–v2, 3 points, 8.0–32.0 core-hours): +0.25 dB per doubling" in since
    assert f"20 core-hours → {30 + 0.25 * math.log2(20 / 8):.2f} dB" in since
    assert "needs 128 core-hours" in since and "about 87 GPU minutes" in since

    flat = [{**p, "psnr_at_0.5": 30.0} if p.get("gpu_minutes") else p for p in pts]
    (since,) = [x for x in projection(flat, pub, margin_db=0.0) if "since the GPU" in x]
    assert "gained nothing" in since
    assert not [x for x in projection(pts[:-1], pub, margin_db=0.0) if "since the GPU" in x]  # two points: no line
