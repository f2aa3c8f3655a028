"""Model cards: the README.md of an entry folder, with YAML front matter (library, tags, licence, datasets,
model-index) the Hub reads, and the entry's figures for people.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from zoo.registry import LEVEL_RANGE, get_arch

if TYPE_CHECKING:
    from zoo.entry import EntryInfo


def _fmt(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, float) and math.isfinite(value) else str(value)


KODAK_METRICS = (("bpp", "bpp"), ("psnr", "PSNR-RGB (dB)"), ("ms_ssim", "MS-SSIM-RGB"))

# The photo collections the zoo's own entries are trained on, as a model card names them: where each part can
# be found and under which licence. A training record names a collection by its folder ("datasets/photos") or
# by a range of its files ("photos 001-035").
TRAINING_COLLECTIONS: dict[str, tuple[str, ...]] = {
    "wallpapers": (
        "github.com/BuddiesOfBudgie/budgie-backgrounds (CC0-1.0)",
        "github.com/elementary/wallpapers (CC0, Unsplash License, Pexels License or CC BY-SA 4.0, per photo)",
        "github.com/pop-os/wallpapers (Unsplash photos, Unsplash License)",
        "Debian package plasma-workspace-wallpapers (GPL-2+)",
        "Debian package mate-backgrounds (GPL-2+)",
        "Debian packages lomiri-wallpapers and lomiri-wallpapers-16.04 (CC BY 4.0, CC BY-SA 3.0, CC BY-SA 4.0 or "
        "CC0, per file)",
    ),
    "photos": (
        "Wikimedia Commons photographs as downsampled in github.com/Zelex/images, folder wikipedia-photos "
        "(mostly Creative Commons, attribution per file on its Commons page)",
    ),
}


def card_datasets(training: Mapping[str, Any]) -> list[str]:
    """What a model card's `datasets:` names for a training record: the sources of each known collection the
    record's `dataset` mentions, else that text as the releaser gave it, else nothing."""
    text = str(training.get("dataset") or "").strip()
    named = [
        source
        for key, sources in TRAINING_COLLECTIONS.items()
        if re.search(rf"datasets/{key}\b|\b{key} \d+-\d+", text)
        for source in sources
    ]
    return named or ([text] if text else [])


def _card_head(info: EntryInfo, tags: list[str], name: str) -> list[str]:
    """A model card's YAML front matter up to its model-index results."""
    e = info.entry
    return [
        "---",
        "library_name: zoo",
        f"license: {info.training.get('license', 'apache-2.0')}",  # an import keeps its origin's licence
        "pipeline_tag: image-to-image",
        "tags:",
        "- learned-image-compression",
        "- image-compression",
        *[f"- {t}" for t in tags],
        f"- {e.arch}",
        *([f"- {get_arch(e.arch).base}"] if info.variable_rate else []),
        f"- {e.metric}",
        *_yaml_list("datasets", card_datasets(info.training)),
        "model-index:",
        f"- name: {name}",
        "  results:",
    ]


def _yaml_list(key: str, items: list[str]) -> list[str]:
    """A front-matter list of strings, each quoted (a JSON string is a YAML one) since free text may hold ": "."""
    return [f"{key}:", *[f"- {json.dumps(item, ensure_ascii=False)}" for item in items]] if items else []


def _kodak_result(task: str, kodak: dict[str, Any]) -> list[str]:
    """One model-index result: Kodak figures of one operating point (a null bpp where none were measured)."""
    lines = [
        "  - task:",
        "      type: image-compression",
        f"      name: {task}",
        "    dataset:",
        "      type: kodak",
        "      name: Kodak PhotoCD (24 images)",
        "    metrics:",
    ]
    for key, name in KODAK_METRICS:
        if key in kodak:
            lines += [f"    - type: {key}", f"      name: {name}", f"      value: {_fmt(kodak[key])}"]
    if not any(k in kodak for k, _ in KODAK_METRICS):
        lines += ["    - type: bpp", "      name: bpp (not evaluated)", "      value: null"]
    return lines


def _card_body(info: EntryInfo, summary: str, load_quality: str, load: str = "Load it with:") -> list[str]:
    """The card's text after the front matter: what it is, how to load it, its widths and training."""
    e = info.entry
    lines = [
        f"{summary} {load}",
        "",
        "```python",
        "import zoo",
        f'codec = zoo.load("{e.arch}", quality={load_quality}, metric="{e.metric}", version="{e.version}")',
        "```",
        "",
        f"Widths: {info.widths}. Weights: {info.weights_dtype}; the integer CDF tables were computed from the "
        "weights exactly as stored. Weights fingerprint: " + info.fingerprint.hex() + ".",
        "",
    ]
    if info.training:
        lines += ["## Training", ""] + [f"- {k}: {v}" for k, v in sorted(info.training.items())] + [""]
    return lines


def _loss(metric: str) -> str:
    return "λ·255²·MSE" if metric == "mse" else "λ·(1−MS-SSIM)"


def model_card(info: EntryInfo) -> str:
    """Hub model card: YAML front matter (library, tags, licence, datasets, model-index) and a summary."""
    if info.variable_rate:
        return _variable_rate_card(info)
    e = info.entry
    spec = get_arch(e.arch)
    kodak = info.results.get("kodak", {})
    lines = _card_head(info, [], f"{e.arch}-q{e.quality}-{e.metric}") + _kodak_result("Image compression", kodak)
    lines += ["---", "", f"# {e.arch} · quality {e.quality} · {e.metric} · v{e.version}", ""]
    lines += _card_body(info, f"{spec.title}, trained with λ = {info.lmbda} ({_loss(e.metric)} + bpp).", str(e.quality))
    if kodak:
        lines += ["## Kodak results", "", "| bpp | PSNR-RGB (dB) | MS-SSIM-RGB |", "| --- | --- | --- |"]
        lines += [
            f"| {_fmt(kodak.get('bpp'))} | {_fmt(kodak.get('psnr'), 2)} | {_fmt(kodak.get('ms_ssim'))} |",
            "",
        ]
        if "source" in kodak:
            lines += [f"Measured with `{kodak['source']}`.", ""]
    return "\n".join(lines)


def _variable_rate_card(info: EntryInfo) -> str:
    """Model card of a variable-rate entry: one model-index result per level, and a table of them."""
    e = info.entry
    spec = get_arch(e.arch)
    rows = [(lv, p) for lv, p in sorted(info.levels.items(), key=lambda kv: float(kv[0])) if p.get("kodak")]
    lines = _card_head(info, ["variable-rate"], f"{e.arch}-{e.metric}")
    for level, point in rows:
        lines += _kodak_result(f"Image compression at level {level}", point["kodak"])
    if not rows:
        lines += _kodak_result("Image compression", {})
    lines += ["---", "", f"# {e.arch} · every quality · {e.metric} · v{e.version}", ""]
    summary = (
        f"{spec.title}: one network for every quality level in {LEVEL_RANGE}. Integer levels were trained at the "
        f"standard λ table ({_loss(e.metric)} + bpp); fractional levels interpolate the per-channel gains in log "
        f"space. Each level folds exactly into a standard `{spec.base}` model of the same widths, which is what "
        "codes the images."
    )
    lines += _card_body(info, summary, "3.5", "Load a level with:")
    if rows:
        lines += [
            "## Kodak results per level",
            "",
            "| level | λ | bpp | PSNR-RGB (dB) | MS-SSIM-RGB |",
            "| --- | --- | --- | --- | --- |",
        ]
        for level, point in rows:
            k = point["kodak"]
            lines.append(
                f"| {level} | {point.get('lambda')} | {_fmt(k.get('bpp'))} | {_fmt(k.get('psnr'), 2)} | "
                f"{_fmt(k.get('ms_ssim'))} |"
            )
        lines.append("")
    return "\n".join(lines)
