"""The learning curve of docs/results.md: each release adds its point (scripts/learning_point.py, from the card),
and benchmarks/rd_report.py lists the points."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from benchmarks.rd_report import psnr_at
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
