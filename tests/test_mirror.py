"""Retired entries: a version whose folder left the working tree is served by the embedded mirror from the git
commit its manifest line names, so old files keep decoding; without that history the error names the entry."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.support import REPO
from zoo.errors import EntryNotFound
from zoo.hub import ManifestEntry, load_manifest
from zoo.mirror import _git_root, build_mirror, read_from_history, start_server, stop_server
from zoo.publish import _git
from zoo.retire import retire_entry

RETIRED = "bmshj2018-hyperprior/q3-mse@1.0"  # superseded by 1.1
GOLDEN = REPO / "tests" / "golden" / "retired-hyperprior-q3-v1.0-48x64.zoo"  # encoded with that entry


def _entry_files(e: ManifestEntry, out: Path) -> Path:
    """The real entry's files: from this checkout's working tree, or from its history once retired here too."""
    folder = REPO / e.path
    if folder.is_dir():
        return folder
    try:
        return read_from_history(e, _git_root(REPO), out)
    except EntryNotFound as exc:
        pytest.skip(f"this clone holds {RETIRED} neither in its working tree nor in its history: {exc}")


@pytest.fixture(scope="module")
def retired_repo(tmp_path_factory) -> dict:
    """A repository laid out like this one, where the entry was released in one commit and retired in the next."""
    root = tmp_path_factory.mktemp("repo")
    real = next(e for e in load_manifest(REPO / "zoo" / "manifest.json") if e.name == RETIRED)
    source = _entry_files(real, tmp_path_factory.mktemp("source"))
    real = dataclasses.replace(real, commit="")  # released here, not yet retired
    _git(root, "init", "-q", "-b", "main")
    shutil.copytree(source, root / real.path)
    manifest = root / "zoo" / "manifest.json"
    manifest.parent.mkdir()
    manifest.write_text(json.dumps({"format": 1, "org": "zoo-codecs", "entries": [dataclasses.asdict(real)]}))
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "release")
    released = _git(root, "rev-parse", "HEAD")
    retired = retire_entry(RETIRED, manifest, root)
    _git(root, "commit", "-q", "-a", "-m", "retire")
    return {"root": root, "manifest": manifest, "released": released, "entry": retired}


def _use_mirror(monkeypatch, tmp_path, endpoint: str, manifest: Path) -> None:
    import huggingface_hub.constants as hfc

    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("ZOO_MANIFEST", str(manifest))
    monkeypatch.setattr(hfc, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", False)


def test_retire_removes_the_folder_and_records_the_commit(retired_repo):
    root, e = retired_repo["root"], retired_repo["entry"]
    assert not (root / e.path).exists()
    assert _git(root, "ls-files", "--", e.path) == ""
    (line,) = json.loads(retired_repo["manifest"].read_text())["entries"]
    assert line["commit"] == retired_repo["released"] == e.commit
    with pytest.raises(Exception, match="already retired"):
        retire_entry(RETIRED, retired_repo["manifest"], root)


@pytest.mark.slow
def test_a_file_made_with_a_retired_entry_decodes_through_the_mirror(retired_repo, tmp_path, monkeypatch, capsys):
    from zoo.cli import main

    root = retired_repo["root"]
    entries = load_manifest(retired_repo["manifest"])
    built = build_mirror(tmp_path / "mirror", entries, entries_dir=root / "model_store" / "entries")
    assert built.published == [RETIRED] and built.from_history == [RETIRED] and not built.unavailable
    _, endpoint = start_server(tmp_path / "mirror", tmp_path / "state")
    try:
        _use_mirror(monkeypatch, tmp_path, endpoint, retired_repo["manifest"])
        out = tmp_path / "decoded.png"
        assert main(["decode", str(GOLDEN), str(out)]) == 0, capsys.readouterr().err
    finally:
        stop_server(tmp_path / "state")
    expected = np.asarray(Image.open(f"{GOLDEN}.png"))
    assert np.array_equal(np.asarray(Image.open(out)), expected)


@pytest.mark.slow
def test_without_the_history_the_error_names_the_retired_entry(retired_repo, tmp_path, monkeypatch, capsys):
    """A copy with no .git (like an installed wheel's user) and a shallow clone: the entry is reported as not
    served, the rest still is, and decoding its file fails with one line naming the entry."""
    import zoo
    from zoo.cli import main

    root = retired_repo["root"]
    entries = load_manifest(retired_repo["manifest"])
    no_git = tmp_path / "copy"
    shutil.copytree(root, no_git, ignore=shutil.ignore_patterns(".git"))
    shallow = tmp_path / "shallow"
    subprocess.run(["git", "clone", "-q", "--depth", "1", f"file://{root}", str(shallow)], check=True)
    for clone in (no_git, shallow):
        built = build_mirror(tmp_path / "mirror", entries, entries_dir=clone / "model_store" / "entries")
        assert built.published == [] and len(built.unavailable) == 1
        assert RETIRED in str(built.unavailable[0]) and "history" in str(built.unavailable[0])

    _, endpoint = start_server(tmp_path / "mirror", tmp_path / "state")  # serves nothing
    try:
        _use_mirror(monkeypatch, tmp_path, endpoint, retired_repo["manifest"])
        with pytest.raises(EntryNotFound, match=f"{RETIRED} is a retired entry"):
            zoo.load("bmshj2018-hyperprior", quality=3, version="1.0")
        assert main(["decode", str(GOLDEN), str(tmp_path / "x.png")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and RETIRED in err[0], err
    finally:
        stop_server(tmp_path / "state")


def test_history_files_are_checked_against_the_manifest(retired_repo, tmp_path):
    """A manifest line whose sha256 does not match what the commit holds is refused, not served."""
    from zoo.errors import IntegrityError

    (e,) = load_manifest(retired_repo["manifest"])
    bad = dataclasses.replace(e, files={**e.files, "model.safetensors": "0" * 64})
    with pytest.raises(IntegrityError, match=RETIRED):
        build_mirror(tmp_path / "mirror", [bad], entries_dir=retired_repo["root"] / "model_store" / "entries")


def test_hub_serve_outside_a_checkout_asks_for_the_entries_folder(tmp_path, monkeypatch, capsys):
    """An installed package has the manifest but not the entries: from another folder, one line saying what to pass."""
    from zoo.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["hub", "serve", "--dir", str(tmp_path / "state")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--entries" in err[0] and "model_store/entries" in err[0], err
    assert not (tmp_path / "state" / "olah.pid").exists()


def test_entry_folder_reads_a_retired_entry_from_its_commit(tmp_path, monkeypatch):
    """Benchmarks and examples name entries by repository path; once retired, the folder comes from the
    commit the manifest records, byte-identical to what the manifest lists (and a live folder is itself)."""
    from zoo.entry import sha256_file
    from zoo.mirror import entry_folder

    monkeypatch.setenv("ZOO_HOME", str(tmp_path))
    retired = next(e for e in load_manifest() if e.commit)
    folder = entry_folder(REPO / retired.path)
    assert folder.is_relative_to(tmp_path)
    assert {f: sha256_file(folder / f) for f in retired.files} == retired.files
    live = next(e for e in load_manifest() if not e.commit)
    assert entry_folder(REPO / live.path) == REPO / live.path
    with pytest.raises(EntryNotFound, match="neither"):
        entry_folder(REPO / "model_store" / "entries" / "no-such" / "v9")


def test_a_retired_entry_stays_a_warm_start(tmp_path, monkeypatch):
    """`zoo train --init model_store/entries/...` of a version that left the working tree reads its weights from
    the commit the manifest names (scripts/train_entries.sh warm-starts from retired entries); a path that no
    manifest line holds is EntryNotFound naming it."""
    from zoo.entry import load_entry
    from zoo.registry import get_arch
    from zoo.train.trainer import load_init_weights

    (e,) = [x for x in load_manifest() if f"{x.arch}/q{x.quality}-{x.metric}@{x.version}" == RETIRED]
    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "home"))
    if not (REPO / e.path).is_dir():
        _entry_files(e, tmp_path / "probe")  # skips where this clone lacks the history
    spec = get_arch("bmshj2018-hyperprior")
    model = spec.model_class(**spec.widths(3))
    load_init_weights(model, str(REPO / e.path))
    want, _ = load_entry(_entry_files(e, tmp_path / "want"))
    got, ref = model.state_dict(), want.state_dict()
    assert got.keys() == ref.keys()
    assert all(torch.equal(got[k].float(), ref[k].float()) for k in ref)
    with pytest.raises(EntryNotFound, match="v9.9"):
        load_init_weights(model, str(REPO / "model_store/entries/bmshj2018-hyperprior/q3-mse/v9.9"))


@pytest.mark.slow
def test_rerunning_the_historic_recipe_retrains_nothing_released(tmp_path):
    """scripts/train_entries.sh skips every stage whose entry the manifest lists, retired ones included (their
    folders have left the working tree): with a `zoo` that records its calls, no stage calls it."""
    shim = tmp_path / "bin"
    shim.mkdir()
    calls = tmp_path / "calls"
    (shim / "zoo").write_text(f'#!/bin/sh\necho "$*" >> {calls}\nexit 1\n')
    (shim / "zoo").chmod(0o755)
    (shim / "python3").symlink_to(sys.executable)  # `released` asks this interpreter's zoo
    env = {**os.environ, "PATH": f"{shim}:{os.environ['PATH']}", "RUNS": str(tmp_path / "runs")}
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "train_entries.sh")], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert not calls.exists(), calls.read_text()
    retired = [e for e in load_manifest() if e.path and not (REPO / e.path).is_dir()]
    assert retired  # the case the guard is for: released entries whose folders are gone
