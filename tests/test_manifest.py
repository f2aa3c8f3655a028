"""The manifest as a typed object: the shipped file round-trips byte for byte, and each change (add, merge of a
family's release, retire) is what the release tools do to the file."""

from __future__ import annotations

from dataclasses import replace

import pytest

from zoo.errors import EntryNotFound, ZooError
from zoo.manifest import Manifest, ManifestEntry, package_manifest_path, repo_for, tag_for
from zoo.registry import get_arch


@pytest.fixture(scope="module")
def shipped() -> Manifest:
    return Manifest.read(package_manifest_path())


def _line(arch: str, quality: int, version: str, **kw) -> ManifestEntry:
    return ManifestEntry(
        arch=arch,
        quality=quality,
        metric="mse",
        version=version,
        repo=repo_for(arch, quality, "mse", variable_rate=get_arch(arch).variable_rate),
        revision=tag_for(version),
        files={"config.json": "0" * 64},
        **kw,
    )


def test_the_shipped_manifest_round_trips_byte_for_byte(shipped):
    assert shipped.dumps() == package_manifest_path().read_text()
    assert Manifest.loads(shipped.dumps()).entries == shipped.entries


def test_repository_and_tag_names_are_those_the_shipped_lines_carry(shipped):
    for e in shipped:
        assert e.repo == shipped.repo_for(e.arch, e.quality, e.metric), e.name
        assert e.revision == tag_for(e.version), e.name


def test_add_replaces_the_same_version_and_keeps_the_files_order(tmp_path):
    path = tmp_path / "manifest.json"
    Manifest([_line("bmshj2018-hyperprior", 3, "1.10"), _line("bmshj2018-factorized", 1, "1.0")]).write(path)
    manifest = Manifest.read(path)
    manifest.add(_line("bmshj2018-hyperprior", 3, "1.9")).add(
        _line("bmshj2018-hyperprior", 3, "1.10", commit="a" * 40)
    ).write()
    again = Manifest.read(path)
    # one order: architecture, metric, quality, then versions as numbers (1.9 before 1.10)
    assert [e.name for e in again] == [
        "bmshj2018-factorized/q1-mse@1.0",
        "bmshj2018-hyperprior/q3-mse@1.9",
        "bmshj2018-hyperprior/q3-mse@1.10",
    ]
    assert again.find("bmshj2018-hyperprior/q3-mse@1.10").commit == "a" * 40
    assert len(manifest) == 2  # a change makes a new manifest: the one read is left as it was


def test_a_family_released_into_a_copy_merges_back_and_a_foreign_change_is_refused():
    base = Manifest([_line("bmshj2018-factorized", 1, "1.0"), _line("bmshj2018-hyperprior-vr", 0, "1.0")])
    released = base.add(_line("bmshj2018-hyperprior-vr", 0, "1.1"))
    merged = base.take_family(released, "bmshj2018-hyperprior-vr")
    assert [e.name for e in merged] == [
        "bmshj2018-factorized/q1-mse@1.0",
        "bmshj2018-hyperprior-vr@1.0",
        "bmshj2018-hyperprior-vr@1.1",
    ]
    meddled = released.add(_line("bmshj2018-factorized", 1, "1.1"))
    with pytest.raises(ZooError, match="other architectures"):
        base.take_family(meddled, "bmshj2018-hyperprior-vr")


def test_retire_records_the_commit_once():
    manifest = Manifest([_line("bmshj2018-hyperprior", 3, "1.0")])
    retired = manifest.retire("bmshj2018-hyperprior/q3-mse@1.0", "b" * 40)
    assert retired.find("bmshj2018-hyperprior/q3-mse@1.0").commit == "b" * 40
    with pytest.raises(ZooError, match="already retired"):
        retired.retire("bmshj2018-hyperprior/q3-mse@1.0", "c" * 40)
    with pytest.raises(EntryNotFound):
        manifest.retire("bmshj2018-hyperprior/q4-mse@1.0", "b" * 40)


def test_current_is_the_variable_rate_entry_marked_current_else_the_newest_fixed_rate_one():
    vr = _line("bmshj2018-hyperprior-vr", 0, "1.0", levels={"3": {"bpp": 0.5}}, current_for=[3])
    manifest = Manifest([_line("bmshj2018-hyperprior", 3, "1.0"), _line("bmshj2018-hyperprior", 3, "1.1"), vr])
    assert manifest.current("bmshj2018-hyperprior", 3).entry == vr
    assert manifest.current("bmshj2018-hyperprior", 3).level == 3.0
    assert manifest.current("bmshj2018-hyperprior-vr", 2.5).level == 2.5
    assert manifest.resolve_point("bmshj2018-hyperprior", 3, version="1.0").entry.version == "1.0"
    without = Manifest([e for e in manifest if e != vr])
    assert without.current("bmshj2018-hyperprior", 3).entry.version == "1.1"
    with pytest.raises(EntryNotFound, match="released: q3-mse"):
        without.current("bmshj2018-hyperprior", 4)


def test_the_json_form_carries_optional_fields_only_where_they_say_something():
    fixed = _line("bmshj2018-hyperprior", 3, "1.0")
    assert "commit" not in fixed.to_json() and "levels" not in fixed.to_json()
    vr = replace(_line("bmshj2018-hyperprior-vr", 0, "1.0", levels={"1": {}}), commit="d" * 40)
    assert list(vr.to_json())[-3:] == ["levels", "current_for", "commit"]
