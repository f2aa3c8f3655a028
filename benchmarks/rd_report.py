"""Regenerate docs/results.md and docs/rd.png: our released entries against classical codecs and
CompressAI's published curves, on Kodak.

    python benchmarks/rd_report.py [--codecs jpeg webp avif] [--images 24]

Classical codecs are measured here with `zoo bench` logic (Pillow); cached in docs/results/*.json. Our
figures come from the manifest (measured with `zoo eval` logic when each entry was released).
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

import numpy as np

from zoo.evaluation.bd import psnr_at

REPO = Path(__file__).resolve().parents[1]
KODAK = Path(os.environ.get("ZOO_SHARED") or REPO.parent / "shared") / "datasets" / "kodak"
OUT = REPO / "docs"
# Each richer entropy model against the one it extends (base architectures; their variable-rate families are
# compared the same way when both are released).
EXTENDS = (
    ("bmshj2018-hyperprior", "bmshj2018-factorized"),
    ("mbt2018-mean", "bmshj2018-hyperprior"),
    ("mbt2018", "mbt2018-mean"),
)


def classical_curve(name: str, images: int, sweep: list[int] | None = None) -> dict:
    path = OUT / "results" / f"{name}.json"
    if path.exists():
        return json.loads(path.read_text())
    import shutil
    import tempfile

    from zoo.evaluation.runner import compressai_layout, evaluate_classical

    with tempfile.TemporaryDirectory() as tmp:
        for p in sorted(KODAK.glob("*.png"))[:images]:
            shutil.copy(p, tmp)
        points = [s.point for s in evaluate_classical(name, tmp, sweep)]
    layout = compressai_layout(name, f"Pillow {name} on Kodak ({images} images), measured by zoo bench", points)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(layout, indent=2) + "\n")
    return layout


def psnr_to_rate(curve_bpp: list[float], curve_psnr: list[float], psnr: float) -> float:
    """Rate of a reference curve at a given PSNR (log-rate interpolation); NaN outside its range."""
    order = np.argsort(curve_psnr)
    ps, rs = np.asarray(curve_psnr)[order], np.log(np.asarray(curve_bpp)[order])
    if not ps[0] <= psnr <= ps[-1]:
        return math.nan
    return float(np.exp(np.interp(psnr, ps, rs)))


def base_of(arch: str) -> str:
    from zoo.registry import get_arch

    return get_arch(arch).base or arch


def learning_curve() -> list[str]:
    """Kodak PSNR at 0.5 bpp against training compute, per architecture: the points recorded in
    docs/results/learning_curve.json (each release adds one)."""
    path = OUT / "results" / "learning_curve.json"
    points = json.loads(path.read_text()) if path.exists() else []
    lines = [
        "",
        "Learning curve: Kodak PSNR-RGB at 0.5 bpp (interpolated in log-rate between levels) against the training "
        "compute behind each curve (core-hours of CPU: process CPU time; GPU minutes where a GPU was lent). "
        "Points from docs/results/learning_curve.json.",
        "",
        "| architecture | curve | core-hours (CPU) | GPU minutes | PSNR at 0.5 bpp (dB) | note |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for p in points:
        lines.append(
            f"| {p['arch']} | {p['curve']} | {p['cpu_hours']:.1f} | {p.get('gpu_minutes', 0)} | "
            f"{p['psnr_at_0.5']:.2f} | {p.get('note', '')} |"
        )
    return lines


def update_readme(summary: list[str]) -> None:
    """Put the short results table between the README's results markers (the full report is docs/results.md)."""
    readme = REPO / "README.md"
    text = readme.read_text()
    start, end = "<!-- results:start -->", "<!-- results:end -->"
    if start not in text or end not in text:
        return
    head, rest = text.split(start, 1)
    readme.write_text(head + start + "\n" + "\n".join(summary).strip() + "\n" + end + rest.split(end, 1)[1])


def kept_sections(path: Path) -> list[str]:
    """The sections of the old report that other benchmarks write (between `<!-- kept:NAME -->` and
    `<!-- /kept:NAME -->`, e.g. benchmarks/effort.py's figures): regenerating the report keeps them."""
    if not path.exists():
        return []
    text, kept = path.read_text(), []
    while "<!-- kept:" in text:
        text = text[text.index("<!-- kept:") :]
        name = text[len("<!-- kept:") : text.index(" -->")]
        close = f"<!-- /kept:{name} -->"
        if close not in text:
            break
        section, text = text.split(close, 1)
        kept += ["", section.rstrip() + "\n" + close]
    return kept


def summary_table(ours: dict, versions: dict, bd: dict, codecs: list[str]) -> list[str]:
    """One row per released curve (a base architecture served by a variable-rate family only through that
    family's row): its versions, PSNR at 0.5 bpp and BD figures, for the README's short table."""
    head = ["entry", "version", "PSNR at 0.5 bpp"] + [f"BD-rate vs {c}" for c in codecs] + ["BD-PSNR vs CompressAI"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name, pts in sorted(ours.items()):
        shown = sorted({versions[p.label, p.quality] for p in pts}, key=str)
        if all(v.startswith("vr ") for v in shown):
            continue  # served by a variable-rate family, which has its own row
        at = psnr_at([p.bpp for p in pts], [p.psnr for p in pts])
        cells = [f"{bd[name][c]:+.1f}%" if c in bd[name] else "–" for c in codecs]
        ref = f"{bd[name]['compressai']:+.2f} dB" if "compressai" in bd[name] else "–"
        psnr = f"{at:.2f} dB" if math.isfinite(at) else "outside the curve"
        row = [name.removeprefix("zoo "), ", ".join(shown), psnr, *cells, ref]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--codecs", nargs="+", default=["jpeg", "webp", "avif"])
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--sweep", help="qualities for codecs not yet cached, e.g. 10,30,50,70,90")
    args = ap.parse_args()
    sweep = [int(q) for q in args.sweep.split(",")] if args.sweep else None

    from zoo.entry import version_key
    from zoo.errors import EntryNotFound, InputError
    from zoo.evaluation.bd import bd_psnr, bd_rate
    from zoo.evaluation.plot import rd_plot, reference_curves
    from zoo.evaluation.runner import RDPoint
    from zoo.hub import load_manifest, resolve_point
    from zoo.registry import ARCHITECTURES, get_arch

    curves = {c: classical_curve(c, args.images, sweep)["results"] for c in args.codecs}
    # Each architecture's curve is what zoo.load gives by default for every quality: the variable-rate entry
    # the manifest marks current for it, else the newest fixed-rate version. Each variable-rate entry's own
    # curve (all eight levels) is listed too.
    manifest = [e for e in load_manifest() if e.metric == "mse"]
    ours: dict[str, list[RDPoint]] = {}
    versions: dict[tuple[str, float], str] = {}
    bases = {get_arch(e.arch).base or e.arch for e in manifest}
    for arch in sorted(bases):
        for quality in get_arch(arch).qualities:
            try:
                point = resolve_point(arch, quality, manifest=manifest)
            except EntryNotFound:
                continue
            e = point.entry
            k = e.levels.get(str(quality), {}) if point.level is not None else e.kodak
            if not k:
                continue
            versions[arch, quality] = f"vr {e.version}" if point.level is not None else e.version
            ours.setdefault(f"zoo {arch}", []).append(
                RDPoint(arch, quality, k["bpp"], k["psnr"], k.get("ms_ssim", math.nan), 0, 0, 24)
            )
    for e in manifest:
        if not e.levels or any(x.arch == e.arch and version_key(x.version) > version_key(e.version) for x in manifest):
            continue
        for level, k in sorted(e.levels.items(), key=lambda kv: float(kv[0])):
            if k:
                versions[e.arch, int(level)] = e.version
                ours.setdefault(f"zoo {e.arch}", []).append(
                    RDPoint(e.arch, int(level), k["bpp"], k["psnr"], k.get("ms_ssim", math.nan), 0, 0, 24)
                )
    lines = [
        "# Kodak results",
        "",
        "Generated by `python benchmarks/rd_report.py` (24 Kodak images; bpp from file sizes, "
        "PSNR-RGB on 8-bit reconstructions). Classical codecs measured here through Pillow (`zoo bench`); "
        "CompressAI's curves as published (zoo/data/SOURCES.md).",
        "",
        "| entry | quality | version | bpp | PSNR (dB) | MS-SSIM | "
        + " | ".join(f"rate vs {c} at equal PSNR" for c in args.codecs)
        + " |",
        "| --- | --- | --- | --- | --- | --- | " + " | ".join("---" for _ in args.codecs) + " |",
    ]
    for name, pts in sorted(ours.items()):
        for p in sorted(pts, key=lambda p: p.quality):
            cells = []
            for c in args.codecs:
                ref = psnr_to_rate(curves[c]["bpp"], curves[c]["psnr-rgb"], p.psnr)
                cells.append(f"{100 * (p.bpp / ref - 1):+.1f}%" if math.isfinite(ref) else "outside range")
            lines.append(
                f"| {name} | {p.quality} | {versions[p.label, p.quality]} | {p.bpp:.4f} | {p.psnr:.2f} | "
                f"{p.ms_ssim:.4f} | " + " | ".join(cells) + " |"
            )
    lines += ["", "BD-rate (pchip) where our curve has at least two qualities:", ""]
    pub = reference_curves()
    bd: dict[str, dict[str, float]] = {name: {} for name in ours}
    for name, pts in sorted(ours.items()):
        arch = name.split()[1]
        if len(pts) < 2:
            lines.append(f"- {name}: a single quality so far; BD-rate needs a curve")
            continue
        r, d = [p.bpp for p in pts], [p.psnr for p in pts]
        for c in args.codecs:
            try:
                bd[name][c] = bd_rate(curves[c]["bpp"], curves[c]["psnr-rgb"], r, d)
                lines.append(f"- {name} vs {c}: {bd[name][c]:+.1f}%")
            except InputError as exc:
                lines.append(f"- {name} vs {c}: {exc}")
        key = f"compressai-{get_arch(arch).base or arch}_mse_cuda"
        if key in pub:
            rb, rp = [q[0] for q in pub[key]], [q[1] for q in pub[key]]
            parts = []
            for what, fn, fmt in (("BD-rate", bd_rate, "{:+.1f}%"), ("BD-PSNR at equal bpp", bd_psnr, "{:+.2f} dB")):
                try:
                    value = fn(rb, rp, r, d)
                    parts.append(f"{what} {fmt.format(value)}")
                    if fn is bd_psnr:
                        bd[name]["compressai"] = value
                except InputError as exc:  # e.g. no common PSNR range
                    parts.append(str(exc))
            lines.append(f"- {name} vs {key} (published): {'; '.join(parts)}")
    lines += ["", "Checks:", ""]
    for name, pts in sorted(ours.items()):
        pts = sorted(pts, key=lambda p: p.quality)
        up = all(a.bpp < b.bpp and a.psnr < b.psnr for a, b in zip(pts, pts[1:], strict=False))
        lines.append(f"- {name}: {'monotone' if up else 'NOT monotone'} (higher quality, more bpp and more PSNR)")
    # Each richer entropy model against the one it extends, at equal bpp; a variable-rate family against the
    # family of the base it extends.
    vr_of = {get_arch(a).base: a for a in ARCHITECTURES if get_arch(a).variable_rate}
    pairs = list(EXTENDS) + [(vr_of[b], vr_of[a]) for b, a in EXTENDS if b in vr_of and a in vr_of]
    for better, base in pairs:
        hi, lo = ours.get(f"zoo {better}"), ours.get(f"zoo {base}")
        if not (hi and lo and len(hi) > 1 and len(lo) > 1):
            continue
        short = f"{better.removeprefix('bmshj2018-')} vs {base.removeprefix('bmshj2018-')}"
        try:
            gain = bd_psnr([p.bpp for p in lo], [p.psnr for p in lo], [p.bpp for p in hi], [p.psnr for p in hi])
            rate = bd_rate([p.bpp for p in lo], [p.psnr for p in lo], [p.bpp for p in hi], [p.psnr for p in hi])
            lines.append(f"- {short} at equal bpp: BD-PSNR {gain:+.2f} dB, BD-rate {rate:+.1f}%")
        except InputError as exc:
            lines.append(f"- {short}: {exc}")
    lines += learning_curve()
    lines += ["", "![Kodak RD](rd.png)"]
    lines += kept_sections(OUT / "results.md") + [""]
    (OUT / "results.md").write_text("\n".join(lines))
    update_readme(summary_table(ours, versions, bd, args.codecs))
    series = {n: p for n, p in ours.items()}
    for c in args.codecs:
        series[f"{c} (Pillow, measured)"] = [
            RDPoint(c, i, b, s, m, 0, 0, args.images)
            for i, (b, s, m) in enumerate(
                zip(curves[c]["bpp"], curves[c]["psnr-rgb"], curves[c]["ms-ssim-rgb"], strict=True)
            )
        ]
    # CompressAI's published curve of every base architecture we release, and of every variable-rate family's
    # base, released yet or not (mbt2018 among them): what each family is heading for
    bases = {get_arch(name.split()[1]).base or name.split()[1] for name in ours} | set(vr_of)
    rd_plot(series, OUT / "rd.png", references=sorted(f"compressai-{b}_mse_cuda" for b in bases))
    print((OUT / "results.md").read_text())


if __name__ == "__main__":
    main()
