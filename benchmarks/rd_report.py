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
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
KODAK = REPO.parent / "shared" / "datasets" / "kodak"
OUT = REPO / "docs"
# what a minute of the lent H100 gave each of two runs beside each other, in this machine's core-hours of the same
# work: 27,000 crops of 256² a minute there against 25,000 a core-hour here (docs/gpu-training.md, measured)
GPU_MINUTE_CORE_HOURS = 1.1


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


def psnr_at(bpp: list[float], psnr: list[float], target: float = 0.5) -> float:
    """PSNR of a curve at a rate (linear in log-rate between its points); NaN outside its range."""
    order = np.argsort(bpp)
    rs, ps = np.log(np.asarray(bpp)[order]), np.asarray(psnr)[order]
    if not rs[0] <= math.log(target) <= rs[-1]:
        return math.nan
    return float(np.interp(math.log(target), rs, ps))


def base_of(arch: str) -> str:
    from zoo.registry import get_arch

    return get_arch(arch).base or arch


def learning_curve(ours: dict, pub: dict) -> list[str]:
    """Kodak PSNR at 0.5 bpp against training compute, per architecture: the points recorded in
    docs/results/learning_curve.json (each release adds one) and the current curves."""
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
    return lines + projection(points, pub)


def projection(points: list[dict], pub: dict, hours: float = 20.0, margin_db: float = 1.5) -> list[str]:
    """Where each variable-rate run is heading on CPU: a least-squares line of PSNR at 0.5 bpp against
    log2(core-hours) through the architecture's CPU-only points, read at `hours` core-hours and solved for the
    issue's target (CompressAI's published PSNR at 0.5 bpp less `margin_db`). A point with GPU minutes is read
    on that line too: the core-hours the line gives its PSNR, less its own, per GPU minute, is what a minute of the
    lent GPU has been worth, and the rest of the way to the target is priced in GPU minutes at that rate."""
    lines = ["", "Projection on CPU (least squares of PSNR at 0.5 bpp on log2 core-hours, CPU-only points):", ""]
    for arch in sorted({p["arch"] for p in points if p["arch"].endswith("-vr")}):
        pts = [(p["cpu_hours"], p["psnr_at_0.5"]) for p in points if p["arch"] == arch and not p.get("gpu_minutes")]
        key = f"compressai-{base_of(arch)}_mse_cuda"
        if len(pts) < 2 or len({h for h, _ in pts}) < 2 or key not in pub:
            continue
        x = np.log2([h for h, _ in pts])
        slope, icept = np.polyfit(x, [d for _, d in pts], 1)
        ref = [q for q in pub[key]]
        target = psnr_at([q[0] for q in ref], [q[1] for q in ref]) - margin_db
        at = icept + slope * math.log2(hours)
        need = f"{2 ** ((target - icept) / slope):,.0f} core-hours" if slope > 0 else "never (no gain per doubling)"
        lines.append(
            f"- {arch}: {slope:+.2f} dB per doubling of CPU time over {len(pts)} points "
            f"({min(h for h, _ in pts):.1f}–{max(h for h, _ in pts):.1f} core-hours); {hours:g} core-hours → "
            f"{at:.2f} dB; the target, {target:.2f} dB ({key} at 0.5 bpp less {margin_db:g} dB), needs {need}"
        )
        gpu = [p for p in points if p["arch"] == arch and p.get("gpu_minutes")]
        if gpu and slope > 0:
            # read where the latest GPU minutes first show: a later point adds CPU cycles that sit below the early
            # line (it overstates what a cycle gains by now) and would charge their shortfall to the GPU
            last = (_since_last_gpu(points, arch) or gpu[-1:])[0]  # else the last point that had any
            equiv = 2 ** ((last["psnr_at_0.5"] - icept) / slope)
            worth = (equiv - last["cpu_hours"]) / last["gpu_minutes"]
            if worth > 0:
                more = (2 ** ((target - icept) / slope) - equiv) / worth
                rest = f"about {more:,.0f} more GPU minutes" if more > 0 else "nothing more"
                lines.append(
                    f"  - with the GPU: {last['curve']} ({last['cpu_hours']:.1f} core-hours + {last['gpu_minutes']:g} "
                    f"GPU minutes) sits where the CPU line puts {equiv:.1f} core-hours, so a GPU minute has been worth "
                    f"about {worth:.2f} core-hours; at that rate the target needs {rest} (a reading of the CPU "
                    "line, which assumes returns keep halving per doubling)"
                )
            else:
                lines.append(f"  - with the GPU: {last['curve']} is not above the CPU line; no price in GPU minutes")
        lines += _since_gpu(arch, points, target, hours)
    return lines


def _since_last_gpu(points: list[dict], arch: str) -> list[dict]:
    """The architecture's latest points that carry its latest GPU minutes: the release that first had them and the
    CPU cycles after it. Empty where its newest point has no GPU minutes."""
    own = [p for p in points if p["arch"] == arch]
    if not own or not own[-1].get("gpu_minutes"):
        return []
    start = len(own)
    while start > 0 and own[start - 1].get("gpu_minutes") == own[-1]["gpu_minutes"]:
        start -= 1
    return own[start:]


def _since_gpu(arch: str, points: list[dict], target: float, hours: float) -> list[str]:
    """The same reading on the latest cycles alone: the points after the architecture's last GPU minutes, which
    were all CPU (their GPU minutes stay what they were). The early line is fitted where each cycle still doubled
    the compute; this one is where the run is now, so it says what the next CPU cycles are worth. Also the
    target at their dB per core-hour held constant: a bound that no diminishing return could beat."""
    tail = _since_last_gpu(points, arch)
    hrs, db = [p["cpu_hours"] for p in tail], [p["psnr_at_0.5"] for p in tail]
    if len(tail) < 3 or len(set(hrs)) < 3:
        return []
    slope, icept = np.polyfit(np.log2(hrs), db, 1)
    per_hour, base = np.polyfit(hrs, db, 1)
    if slope <= 0 or per_hour <= 0:
        return [f"  - the {len(tail)} CPU cycles since the GPU's last minutes gained nothing: no target in sight"]
    need = 2 ** ((target - icept) / slope)
    bound = (target - base) / per_hour
    names = f"{tail[0]['curve'].split(',')[0]}–{tail[-1]['curve'].split(',')[0]}"
    gpu = [(h - max(hrs)) / GPU_MINUTE_CORE_HOURS for h in (need, bound)]
    return [
        f"  - the CPU cycles since the GPU's last minutes ({names}, {len(tail)} points, {min(hrs):.1f}–{max(hrs):.1f} "
        f"core-hours): {slope:+.2f} dB per doubling; {hours:g} core-hours → {icept + slope * math.log2(hours):.2f} "
        f"dB; the target needs {need:,.0f} core-hours ({bound:,.0f} even at their {per_hour:.3f} dB per core-hour "
        f"held constant, with no diminishing return); in the lent H100's crops, {GPU_MINUTE_CORE_HOURS:g} core-hours "
        f"a minute per run, the rest of the way is about {gpu[0]:,.0f} GPU minutes ({gpu[1]:,.0f} at the constant rate)"
    ]


def update_readme(lines: list[str]) -> None:
    """Put the table and the BD-rates between the README's results markers (the plot path made relative)."""
    readme = REPO / "README.md"
    text = readme.read_text()
    start, end = "<!-- results:start -->", "<!-- results:end -->"
    if start not in text or end not in text:
        return
    body = [line.replace("](rd.png)", "](docs/rd.png)") for line in lines[2:]]  # without the page title
    head, rest = text.split(start, 1)
    readme.write_text(head + start + "\n" + "\n".join(body).strip() + "\n" + end + rest.split(end, 1)[1])


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
    from zoo.registry import get_arch

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
    for name, pts in sorted(ours.items()):
        arch = name.split()[1]
        if len(pts) < 2:
            lines.append(f"- {name}: a single quality so far; BD-rate needs a curve")
            continue
        r, d = [p.bpp for p in pts], [p.psnr for p in pts]
        for c in args.codecs:
            try:
                lines.append(f"- {name} vs {c}: {bd_rate(curves[c]['bpp'], curves[c]['psnr-rgb'], r, d):+.1f}%")
            except InputError as exc:
                lines.append(f"- {name} vs {c}: {exc}")
        key = f"compressai-{get_arch(arch).base or arch}_mse_cuda"
        if key in pub:
            rb, rp = [q[0] for q in pub[key]], [q[1] for q in pub[key]]
            parts = []
            for what, fn, fmt in (("BD-rate", bd_rate, "{:+.1f}%"), ("BD-PSNR at equal bpp", bd_psnr, "{:+.2f} dB")):
                try:
                    parts.append(f"{what} {fmt.format(fn(rb, rp, r, d))}")
                except InputError as exc:  # e.g. no common PSNR range
                    parts.append(str(exc))
            lines.append(f"- {name} vs {key} (published): {'; '.join(parts)}")
    lines += ["", "Checks:", ""]
    for name, pts in sorted(ours.items()):
        pts = sorted(pts, key=lambda p: p.quality)
        up = all(a.bpp < b.bpp and a.psnr < b.psnr for a, b in zip(pts, pts[1:], strict=False))
        lines.append(f"- {name}: {'monotone' if up else 'NOT monotone'} (higher quality, more bpp and more PSNR)")
    # Each richer entropy model against the one it extends, at equal bpp.
    for better, base in (
        ("bmshj2018-hyperprior", "bmshj2018-factorized"),
        ("mbt2018-mean", "bmshj2018-hyperprior"),
        ("mbt2018-mean-vr", "bmshj2018-hyperprior-vr"),
    ):
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
    lines += learning_curve(ours, pub)
    lines += ["", "![Kodak RD](rd.png)", ""]
    (OUT / "results.md").write_text("\n".join(lines))
    update_readme(lines)
    series = {n: p for n, p in ours.items()}
    for c in args.codecs:
        series[f"{c} (Pillow, measured)"] = [
            RDPoint(c, i, b, s, m, 0, 0, args.images)
            for i, (b, s, m) in enumerate(
                zip(curves[c]["bpp"], curves[c]["psnr-rgb"], curves[c]["ms-ssim-rgb"], strict=True)
            )
        ]
    rd_plot(
        series,
        OUT / "rd.png",
        references=sorted(
            {f"compressai-{get_arch(name.split()[1]).base or name.split()[1]}_mse_cuda" for name in ours}
        ),
    )
    print((OUT / "results.md").read_text())


if __name__ == "__main__":
    main()
