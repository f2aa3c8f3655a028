"""The entries committed under model_store/ are the ones the package's manifest lists, byte for byte, within the
repository's size budget, and each architecture's released curve is monotone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from zoo.entry import CONFIG_NAME, ENTRY_FILES, sha256_file
from zoo.hub import load_manifest, manifest_path, resolve_point
from zoo.mirror import _git_root, read_from_history
from zoo.publish import _git
from zoo.registry import get_arch

REPO = Path(__file__).resolve().parents[1]
STORE = REPO / "model_store" / "entries"
BUDGET_BYTES = 100_000_000  # issue 15: the shipped entries in the working tree stay within 100 MB (issue 9: 200)

pytestmark = pytest.mark.skipif(not STORE.is_dir(), reason="no model_store/entries in this checkout")


@pytest.fixture(scope="module")
def manifest():
    assert manifest_path().is_file()
    return load_manifest(manifest_path())


def test_every_listed_entry_is_committed_with_the_listed_checksums(manifest):
    assert manifest, "the package's manifest lists no entries"
    for e in manifest:
        if e.commit:  # retired: served from that commit (tests/test_mirror.py)
            continue
        folder = REPO / e.path
        assert folder.is_dir(), f"{e.name}: {e.path} is missing"
        assert set(e.files) == set(ENTRY_FILES), e.name
        for name, digest in e.files.items():
            assert sha256_file(folder / name) == digest, f"{e.name}: {name} differs from the manifest"
        config = json.loads((folder / CONFIG_NAME).read_text())
        assert (config["architecture"], config["quality"], config["metric"]) == (e.arch, e.quality, e.metric), e.name
        assert config["version"] == e.version, e.name
        if e.levels:  # a variable-rate entry: each level's figures
            assert set(e.levels) == set(config["levels"]), e.name
            for level, figures in e.levels.items():
                kodak = config["levels"][level]["kodak"]
                assert all(kodak[k] == pytest.approx(v) for k, v in figures.items()), f"{e.name} level {level}"
            continue
        kodak = config["results"]["kodak"]
        assert all(kodak[k] == pytest.approx(v) for k, v in e.kodak.items()), f"{e.name}: zoo list would disagree"


def test_every_retired_entry_is_in_the_history_it_names(manifest, tmp_path):
    """A retired line's commit holds its files, byte for byte: the mirror serves them from there, so a wrong
    commit (say, retired before its release was committed) would stop old files decoding, unseen until then."""
    root = _git_root(REPO)
    if root is None or _git(root, "rev-parse", "--is-shallow-repository") == "true":
        pytest.skip("not a full git clone: the retired entries' history is not here")
    retired = [e for e in manifest if e.commit]
    assert retired, "no retired entry in the manifest"
    for e in retired:
        folder = read_from_history(e, root, tmp_path / e.name.replace("/", "_"))
        for name, digest in e.files.items():
            assert sha256_file(folder / name) == digest, f"{e.name}: {name} at {e.commit[:12]} differs"
        assert json.loads((folder / CONFIG_NAME).read_text())["version"] == e.version, e.name
        for name in e.files:
            (folder / name).unlink()


def test_no_unlisted_entry_folders_and_the_total_is_within_budget(manifest):
    listed = {(REPO / e.path).resolve() for e in manifest if not e.commit}
    on_disk = {p.parent.resolve() for p in STORE.glob(f"*/*/*/{CONFIG_NAME}")}
    assert on_disk == listed, f"unlisted: {sorted(map(str, on_disk - listed))}"
    total = sum(p.stat().st_size for p in STORE.rglob("*") if p.is_file())
    assert total <= BUDGET_BYTES, f"model_store/entries holds {total:,} bytes, over the {BUDGET_BYTES:,} budget"


def test_each_architecture_curve_is_monotone_in_its_newest_versions(manifest):
    """The curve zoo.load gives by default: `resolve_point` picks each quality's entry as loading does (a
    variable-rate entry where the manifest marks it current); and every variable-rate entry's own levels."""
    for arch in sorted({get_arch(e.arch).base or e.arch for e in manifest}):
        qualities = sorted({e.quality for e in manifest if e.arch == arch and e.metric == "mse"})
        points = []
        for q in qualities:
            point = resolve_point(arch, q, manifest=manifest)
            figures = point.entry.levels[str(q)] if point.level is not None else point.entry.kodak
            points.append((f"q{q} {point.entry.name}", figures))
        for (a, lo), (b, hi) in zip(points, points[1:], strict=False):
            assert lo["bpp"] < hi["bpp"] and lo["psnr"] < hi["psnr"], f"{arch}: {a} -> {b} is not monotone"
    for e in manifest:
        levels = [e.levels[k] for k in sorted(e.levels, key=float)]
        for lo, hi in zip(levels, levels[1:], strict=False):
            assert lo["bpp"] < hi["bpp"] and lo["psnr"] < hi["psnr"], f"{e.name}: levels are not monotone"


def test_each_shipped_card_names_its_training_data_as_the_card_writer_does(manifest):
    """A card's `datasets:` names the photo collections where a user finds them, with their licences (as
    `model_card` writes it from the entry's training record), never a folder of this repository's setup."""
    import yaml

    from zoo.card import card_datasets
    from zoo.entry import CARD_NAME, read_config

    for e in manifest:
        if e.commit:  # retired: its card is history
            continue
        folder = REPO / e.path
        card = (folder / CARD_NAME).read_text()
        front = yaml.safe_load(card.removeprefix("---\n").split("\n---\n", 1)[0])
        assert front["datasets"] == card_datasets(read_config(folder).training), e.name
        assert front["datasets"] and not any("shared/" in d or "datasets/" in d for d in front["datasets"]), e.name
