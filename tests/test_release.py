"""Releasing an entry family from a run of its recipe: the entry folder, the card naming the recipe, the manifest
line (other entries kept), and the learning-curve point of a released variable-rate entry."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest

from tests.support import REPO, small_recipe
from zoo.cli import build_parser, main
from zoo.cli.train_cmds import train_config
from zoo.entry import read_config
from zoo.errors import InputError
from zoo.evaluation.bd import psnr_at
from zoo.hub import load_manifest, manifest_path, resolve_point
from zoo.mirror import entry_folder
from zoo.train.release import add_learning_point, learning_point, release_family
from zoo.train.trainer import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A two-step run of a small recipe, in a checkout-like folder with a copy of the package's manifest."""
    root = tmp_path_factory.mktemp("checkout")
    recipe = small_recipe(root)
    cfg, _, _ = train_config(build_parser().parse_args(["train", "--recipe", str(recipe), "--out", str(root / "run")]))
    train(cfg)
    shutil.copyfile(recipe, root / "run" / "recipe.toml")  # as `zoo train --recipe` keeps it
    shutil.copyfile(manifest_path(), root / "manifest.json")
    return root, recipe


@pytest.mark.slow
def test_a_family_release_names_its_recipe_and_joins_the_manifest(trained):
    root, recipe = trained
    before = json.loads((root / "manifest.json").read_text())["entries"]
    done = release_family(recipe, root / "run", "0.1", repo_root=root, manifest=root / "manifest.json", note="test")
    folder = root / "model_store" / "entries" / "bmshj2018-hyperprior-vr" / "mse" / "v0.1"
    assert done.folder == folder
    card = read_config(folder)
    assert card.training["recipe"] == "recipes/bmshj2018-hyperprior-vr.toml"
    assert card.training["recipe_sha256"] == hashlib.sha256(recipe.read_bytes()).hexdigest()
    assert card.training["note"] == "test" and card.entry.version == "0.1"
    assert all("kodak" in level for level in card.levels.values())  # measured on the recipe's evaluation set
    assert "recipe_sha256" in (folder / "README.md").read_text()

    after = json.loads((root / "manifest.json").read_text())["entries"]
    (line,) = [e for e in after if e not in before]
    assert (line["arch"], line["version"], line["path"]) == (
        "bmshj2018-hyperprior-vr",
        "0.1",
        "model_store/entries/bmshj2018-hyperprior-vr/mse/v0.1",
    )
    assert isinstance(line["current_for"], list) and set(line["levels"]) == set(card.levels)
    assert [e for e in after if e != line] == before  # every other entry as it was

    with pytest.raises(InputError):  # a version is released once
        release_family(recipe, root / "run", "0.1", repo_root=root, manifest=root / "manifest.json")


@pytest.mark.slow
def test_zoo_release_recipe_writes_the_entry(trained, capsys):
    root, recipe = trained
    argv = ["release", str(root / "run"), "--recipe", str(recipe), "--version", "0.2", "--repo-root", str(root)]
    assert main([*argv, "--manifest", str(root / "manifest.json")]) == 0
    versions = {e.version for e in load_manifest(root / "manifest.json") if e.arch == "bmshj2018-hyperprior-vr"}
    assert "0.2" in versions


def test_a_run_of_another_family_is_refused(tmp_path):
    recipe = small_recipe(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.toml").write_text(recipe.read_text().replace("bmshj2018-hyperprior-vr", "mbt2018-mean-vr"))
    with pytest.raises(InputError):
        release_family(recipe, run, "0.1", repo_root=tmp_path, manifest=tmp_path / "manifest.json")
    assert not (tmp_path / "model_store").exists()


def test_a_release_adds_its_point_from_its_card(tmp_path):
    entry = resolve_point("bmshj2018-hyperprior-vr", 3).entry
    folder = entry_folder(REPO / entry.path)
    card = read_config(folder)
    curve = tmp_path / "curve.json"
    curve.write_text(json.dumps([{"arch": "other", "curve": "v1.0", "cpu_hours": 1.0, "psnr_at_0.5": 27.0}]))

    for _ in range(2):  # a second time replaces the point instead of adding another
        add_learning_point(curve, learning_point(folder))
    points = json.loads(curve.read_text())
    assert [p["arch"] for p in points] == ["other", "bmshj2018-hyperprior-vr"]
    p = points[-1]
    assert p["curve"] == f"v{entry.version}, every level"
    assert p["cpu_hours"] == pytest.approx(card.training["total_cpu_hours"], abs=0.005)
    assert p["gpu_minutes"] == pytest.approx(card.training.get("total_gpu_minutes", 0.0), abs=0.05)
    kodak = [lv["kodak"] for lv in card.levels.values()]
    want = psnr_at([k["bpp"] for k in kodak], [k["psnr"] for k in kodak])
    assert p["psnr_at_0.5"] == pytest.approx(want, abs=5e-4) and 25 < want < 40


def test_an_entry_without_a_curve_has_no_point():
    fixed = next(e for e in load_manifest() if e.arch == "bmshj2018-factorized")
    with pytest.raises(InputError):
        learning_point(entry_folder(REPO / fixed.path))
