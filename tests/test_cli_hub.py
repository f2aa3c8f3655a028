"""`zoo list`: by default what `zoo.load` serves for each architecture and quality, as the resolver picks it;
`--all` every version ever released, the retired ones marked with what answers their name now."""

from __future__ import annotations

import json
import re

import pytest

from zoo.cli import main
from zoo.hub import ManifestEntry, load_manifest, resolve_point
from zoo.registry import get_arch


@pytest.fixture
def shipped(monkeypatch) -> list[ManifestEntry]:
    monkeypatch.delenv("ZOO_MANIFEST", raising=False)
    return load_manifest()


def _listing(capsys, *args: str) -> list[dict]:
    assert main(["list", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _answerable(manifest: list[ManifestEntry]) -> set[tuple[str, int | None, str]]:
    """Every name the manifest's lines answer: a fixed-rate line its own quality, a variable-rate line every
    level of its architecture and the base qualities it is marked current for."""
    names: set[tuple[str, int | None, str]] = set()
    for e in manifest:
        base = get_arch(e.arch).base
        if base is None:
            names.add((e.arch, e.quality, e.metric))
        else:
            names.add((e.arch, None, e.metric))
            names.update((base, q, e.metric) for q in e.current_for)
    return names


def test_the_default_listing_is_what_zoo_load_resolves_on_the_shipped_manifest(shipped, capsys):
    rows = _listing(capsys)
    keys = [(r["arch"], r["quality"], r["metric"]) for r in rows]
    assert len(keys) == len(set(keys)), "one row per architecture, quality and metric"
    assert set(keys) == _answerable(shipped)
    for r in rows:
        if r["quality"] is None:  # a variable-rate architecture: its newest version, every level once
            point = resolve_point(r["arch"], 1, r["metric"], manifest=shipped)
            assert r["entry"] == point.entry.name and r["levels"] == point.entry.levels
            continue
        point = resolve_point(r["arch"], r["quality"], r["metric"], manifest=shipped)
        assert (r["entry"], r["level"]) == (point.entry.name, point.level), r
        figures = point.entry.kodak if point.level is None else point.entry.levels[str(r["quality"])]
        assert r["kodak"] == figures, r
    served = {r["entry"] for r in rows}
    retired = [e for e in shipped if e.name not in served]
    assert retired, "the shipped manifest has superseded versions: none of them may be listed"

    assert main(["list"]) == 0
    text = capsys.readouterr().out
    assert len([line for line in text.splitlines()[1:] if not line.startswith("  level")]) == len(rows)
    for e in retired:
        assert not re.search(re.escape(e.name) + r"(\s|$)", text), f"{e.name} is retired but listed"


def test_all_lists_every_version_and_what_replaced_the_retired_ones(shipped, capsys):
    served = {(r["arch"], r["quality"], r["metric"]): r for r in _listing(capsys)}
    rows = _listing(capsys, "--all")
    assert sorted(r["entry"] for r in rows) == sorted(e.name for e in shipped)
    serving = {r["entry"] for r in served.values()}
    for r in rows:
        assert r["retired"] == (r["entry"] not in serving), r["entry"]
        if r["retired"]:
            own = (r["arch"], None if get_arch(r["arch"]).variable_rate else r["quality"], r["metric"])
            assert r["replaced_by"] == served[own]["served_by"], r["entry"]
            assert not r["serves"]
        else:
            assert r["serves"] and r["replaced_by"] is None
    assert any(r["retired"] for r in rows) and not all(r["retired"] for r in rows)
    assert main(["list", "--all"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == len(shipped) + 1


def test_an_architecture_narrows_the_listing(shipped, capsys):
    arch = "bmshj2018-hyperprior"
    rows = _listing(capsys, arch)
    assert rows and {r["arch"] for r in rows} == {arch}
    assert rows == [r for r in _listing(capsys) if r["arch"] == arch]
    every = _listing(capsys, arch, "--all")
    assert sorted(r["entry"] for r in every) == sorted(e.name for e in shipped if e.arch == arch)

    assert main(["list", "no-such-arch"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown architecture 'no-such-arch'" in err[0]


def _line(arch: str, quality: int, version: str, **extra) -> dict:
    return {
        "arch": arch, "quality": quality, "metric": "mse", "version": version,
        "repo": f"o/{arch}-q{quality}", "revision": f"v{version}", "files": {}, **extra,
    }  # fmt: skip


def test_current_for_picks_the_newest_variable_rate_entry_per_quality(tmp_path, monkeypatch, capsys):
    """q1 is still served by vr v1.0 (v1.1 is not current for it), q2-3 by v1.1, q4 by its fixed-rate entry;
    the fixed-rate q3 is retired. The -vr architecture itself lists only v1.1, once, with its levels."""
    figures = {v: {str(q): {"bpp": 0.1 * q, "psnr": 25 + q + float(v), "ms_ssim": 0.9} for q in range(1, 9)}
               for v in ("1.0", "1.1")}  # fmt: skip
    lines = [
        _line("bmshj2018-hyperprior", 3, "1.0", kodak={"bpp": 0.4, "psnr": 26.8, "ms_ssim": 0.93}),
        _line("bmshj2018-hyperprior", 4, "1.0", kodak={"bpp": 0.5, "psnr": 28.0, "ms_ssim": 0.95}),
        _line("bmshj2018-hyperprior-vr", 0, "1.0", levels=figures["1.0"], current_for=[1, 2, 3]),
        _line("bmshj2018-hyperprior-vr", 0, "1.1", levels=figures["1.1"], current_for=[2, 3]),
    ]
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"format": 1, "org": "o", "entries": lines}))
    monkeypatch.setenv("ZOO_MANIFEST", str(manifest))

    rows = {(r["arch"], r["quality"]): r for r in _listing(capsys)}
    assert {k: r["served_by"] for k, r in rows.items()} == {
        ("bmshj2018-hyperprior", 1): "bmshj2018-hyperprior-vr@1.0 level 1",
        ("bmshj2018-hyperprior", 2): "bmshj2018-hyperprior-vr@1.1 level 2",
        ("bmshj2018-hyperprior", 3): "bmshj2018-hyperprior-vr@1.1 level 3",
        ("bmshj2018-hyperprior", 4): "bmshj2018-hyperprior/q4-mse@1.0",
        ("bmshj2018-hyperprior-vr", None): "bmshj2018-hyperprior-vr@1.1",
    }
    assert rows[("bmshj2018-hyperprior", 3)]["kodak"] == figures["1.1"]["3"]
    assert rows[("bmshj2018-hyperprior-vr", None)]["levels"] == figures["1.1"]

    assert main(["list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("bmshj2018-hyperprior-vr ") for line in out) == 1
    assert sum(line.startswith("  level") for line in out) == 8
    assert not any("q3-mse@1.0" in line for line in out)

    every = {r["entry"]: r for r in _listing(capsys, "--all")}
    assert every["bmshj2018-hyperprior/q3-mse@1.0"]["replaced_by"] == "bmshj2018-hyperprior-vr@1.1 level 3"
    assert every["bmshj2018-hyperprior-vr@1.0"]["serves"] == ["bmshj2018-hyperprior q1"]
    assert every["bmshj2018-hyperprior-vr@1.1"]["serves"] == [
        "bmshj2018-hyperprior q2-3",
        "bmshj2018-hyperprior-vr (every level)",
    ]
    assert not any(r["retired"] for name, r in every.items() if name != "bmshj2018-hyperprior/q3-mse@1.0")
