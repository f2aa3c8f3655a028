"""Recipes: the shipped ones resolve to the data and starting points they name, `zoo train --recipe` runs one with
flags overriding its keys, and the train flags are TrainConfig's fields."""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys

import pytest

from tests.support import REPO, SHARED, need_shared, small_recipe
from zoo.cli import build_parser, main
from zoo.cli.train_cmds import add_config_flags, train_config
from zoo.errors import InputError
from zoo.hub import load_manifest
from zoo.registry import get_arch
from zoo.train.config import TrainConfig
from zoo.train.recipe import read_recipe, resolve_files, starting_point

RECIPES = sorted((REPO / "recipes").glob("*.toml"))


def _parse(*argv: str):
    return train_config(build_parser().parse_args(["train", *argv]))


def test_one_recipe_per_released_variable_rate_family():
    released = {e.arch for e in load_manifest() if get_arch(e.arch).variable_rate}
    families = {read_recipe(p).family for p in RECIPES}
    assert released <= families and "mbt2018-vr" in families
    for path in RECIPES:
        recipe = read_recipe(path)
        assert path.stem == recipe.family and get_arch(recipe.family).variable_rate


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_a_shipped_recipe_names_its_data_and_start(path):
    recipe = read_recipe(path)
    datasets = need_shared(SHARED / "datasets")
    train = resolve_files(recipe, recipe.train, datasets)
    val = resolve_files(recipe, recipe.val, datasets)
    # the wallpapers and photos 001-035 train, photos 036-039 validate, and nothing is in both
    assert len(train) == 178 + 35 and sorted(p.rsplit("/", 1)[1] for p in val) == [f"0{i}.png" for i in range(36, 40)]
    assert not set(train) & set(val)
    start = starting_point(recipe, dict(recipe.settings))
    paths = {e.path for e in load_manifest()}
    assert start in paths  # a released entry, in the working tree or retired into history
    assert recipe.settings["first_init"] in paths


def test_mbt2018_vr_grows_from_the_mean_scale_family():
    recipe = read_recipe(REPO / "recipes" / "mbt2018-vr.toml")
    s = recipe.settings
    assert s["init_context"] == "identity" and s["widths"] == {"N": 128, "M": 192}
    # cycles from a release train every part, gently (phase 1, the context parts alone at 3e-4, grew v1.0)
    assert list(s["train_only"]) == []
    assert (s["lr"], s["warmup_steps"]) == (3e-5, 50)
    hp = read_recipe(REPO / "recipes" / "mbt2018-mean-vr.toml").settings
    same = ("scheduler", "max_minutes", "budget_clock", "amp", "channels_last", "compile", "ema_decay", "batch_size")
    assert {k: s[k] for k in same} == {k: hp[k] for k in same}
    if not any(e.arch == "mbt2018-vr" for e in load_manifest()):  # before its first release: the mean-scale v1.12
        assert starting_point(recipe, dict(s)) == "model_store/entries/mbt2018-mean-vr/mse/v1.12"


def test_every_train_setting_is_a_flag_with_trainconfigs_default():
    cfg, threads, recipe = _parse("--arch", "bmshj2018-hyperprior", "--train", "t", "--val", "v", "--out", "o")
    assert recipe is None and threads is None
    assert cfg == TrainConfig(arch="bmshj2018-hyperprior", quality=0, train_dir="t", val_dir="v", out="o")
    parser = argparse.ArgumentParser()
    add_config_flags(parser)
    assert {a.dest for a in parser._actions} >= {f.name for f in dataclasses.fields(TrainConfig)} - {"widths"}


def test_flags_override_the_recipe_and_a_budget_flag_replaces_its_budget(tmp_path):
    extra = '[budget]\nmax_minutes = 100\nbudget_clock = "cpu"\n[precision]\ncompile = true\n'
    recipe = small_recipe(tmp_path, extra=extra)
    cfg, _, _ = _parse("--recipe", str(recipe), "--lr", "5e-5", "--more-minutes", "30", "--resume", "--N", "16")
    assert (cfg.lr, cfg.max_minutes, cfg.more_minutes, cfg.budget_clock) == (5e-5, None, 30, "cpu")
    assert cfg.resume and cfg.widths == {"N": 16, "M": 24}
    assert len(cfg.train_dir) == 2 and len(cfg.val_dir) == 1
    cfg, _, _ = _parse("--recipe", str(recipe))
    assert (cfg.lr, cfg.max_minutes, cfg.out) == (1e-3, 100, str(tmp_path / "runs" / "bmshj2018-hyperprior-vr"))
    assert cfg.compile and not _parse("--recipe", str(recipe), "--no-compile")[0].compile  # a recipe's true undone


def test_the_threads_flag_overrides_the_recipes_threads(tmp_path):
    """A recipe's [run] threads is not a TrainConfig field: it is taken out whether or not --threads is given."""
    recipe = small_recipe(tmp_path)  # [run] threads = 1
    assert _parse("--recipe", str(recipe))[1] == 1
    cfg, threads, _ = _parse("--recipe", str(recipe), "--threads", "2")
    assert threads == 2 and cfg.arch == "bmshj2018-hyperprior-vr"


def test_a_resume_goes_on_with_the_budget_its_checkpoint_trained_under(tmp_path):
    """A cycle extended with --more-minutes keeps its extension when resumed with the recipe alone, and its
    starting point; a budget flag still replaces the budget, and a run without a checkpoint takes the recipe's."""
    import torch

    recipe = small_recipe(tmp_path, "[budget]\nmax_minutes = 100\n")
    out = tmp_path / "run"
    assert _parse("--recipe", str(recipe), "--out", str(out), "--resume")[0].max_minutes == 100
    out.mkdir()
    saved = {"steps": None, "epochs": None, "max_minutes": 229.4, "init": "runs/earlier/best.pt"}
    torch.save({"model": {"w": torch.zeros(1)}, "config": json.dumps(saved)}, out / "last.pt")
    cfg = _parse("--recipe", str(recipe), "--out", str(out), "--resume")[0]
    assert (cfg.max_minutes, cfg.steps, cfg.epochs) == (229.4, None, None)
    assert cfg.init == "runs/earlier/best.pt"  # what the weights grew from, which the release names
    assert _parse("--recipe", str(recipe), "--out", str(out), "--resume", "--max-minutes", "50")[0].max_minutes == 50
    assert _parse("--recipe", str(recipe), "--out", str(out))[0].max_minutes == 100  # a fresh start: the recipe's
    (out / "last.pt").write_bytes(b"not a checkpoint")  # a damaged checkpoint: a typed one-line error
    with pytest.raises(InputError, match="not a loadable weights-only checkpoint"):
        _parse("--recipe", str(recipe), "--out", str(out), "--resume")


def test_a_bad_recipe_is_one_line(tmp_path, capsys):
    bad = tmp_path / "recipes" / "x.toml"
    bad.parent.mkdir()
    head = '[model]\narch = "bmshj2018-hyperprior-vr"\n'
    for text in (head + "learning_rate = 1\n", head + 'lr = "fast"\n', "[model\n", "[nonsense]\na = 1\n"):
        bad.write_text(text)
        with pytest.raises(InputError):
            read_recipe(bad)
        assert main(["train", "--recipe", str(bad)]) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert main(["train", "--steps", "1"]) == 2  # neither a recipe nor --arch
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_a_source_that_matches_nothing_is_refused(tmp_path):
    recipe = read_recipe(small_recipe(tmp_path))
    with pytest.raises(InputError, match="no images match"):
        resolve_files(recipe, recipe.train, tmp_path / "elsewhere")


@pytest.mark.slow
def test_zoo_train_runs_a_recipe_and_keeps_it_with_the_run(tmp_path):
    recipe = small_recipe(tmp_path)
    run = tmp_path / "run"
    argv = ["-m", "zoo.train", "--recipe", str(recipe), "--steps", "2", "--out", str(run)]
    done = subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr
    assert (run / "recipe.toml").read_bytes() == recipe.read_bytes()
    config = json.loads((run / "config.json").read_text())
    assert config["arch"] == "bmshj2018-hyperprior-vr" and config["widths"] == {"N": 16, "M": 24}
    assert [p.rsplit("/", 1)[1] for p in config["train_dir"]] == ["a.png", "b.png"]
    # a finished cycle is released, not resumed
    done = subprocess.run([sys.executable, *argv, "--resume"], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1


def test_resuming_with_another_version_of_the_recipe_is_refused(tmp_path, capsys):
    recipe = small_recipe(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.toml").write_text(recipe.read_text().replace("lr = 1e-3", "lr = 2e-3"))
    assert main(["train", "--recipe", str(recipe), "--out", str(run), "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--recipe {run / 'recipe.toml'}" in err[0]
    assert not (run / "config.json").exists()  # refused before any training
    # as the message says: the run's own copy resumes it (it is not copied onto itself)
    kept = (run / "recipe.toml").read_bytes()
    assert main(["train", "--recipe", str(run / "recipe.toml"), "--out", str(run), "--resume", "--steps", "2"]) == 0
    assert (run / "recipe.toml").read_bytes() == kept and (run / "summary.json").exists()
