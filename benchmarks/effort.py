"""What encoder effort buys: BD-rate / BD-PSNR of each effort against effort 0, seconds per image and per
megapixel, the gain as a function of refinement steps, BD-rate against WebP and JPEG, and the peak memory of
refining one 1024x1024 tile batch.

The full measurement (hours on a 2-core CPU):

    python benchmarks/effort.py

A reduced run (what docs/effort.md reports on the shared 2-core CPU):

    python benchmarks/effort.py --entries bmshj2018-hyperprior-vr --images kodim23 \\
        --levels 1 3 5 8 --efforts 0 1 2 --steps-sweep --steps 25 50 --sweep-level 3 --classical

Figures are real: file bytes from `bitstream.dumps`, PSNR of the 8-bit decoded image. Per-image results go to
--out (JSON lines) so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from functools import cache, partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

if TYPE_CHECKING:
    from zoo.refine import EffortLevel

KODAK = Path(os.environ.get("ZOO_SHARED") or REPO.parent / "shared") / "datasets" / "kodak"
ENTRIES = {
    "bmshj2018-hyperprior-vr": REPO / "model_store/entries/bmshj2018-hyperprior-vr/mse/v1.12",
    "mbt2018-mean-vr": REPO / "model_store/entries/mbt2018-mean-vr/mse/v1.12",
}
IMAGES = ("kodim01", "kodim03", "kodim05", "kodim07", "kodim13", "kodim19", "kodim21", "kodim23")


def read(name: str) -> tuple[torch.Tensor, np.ndarray]:
    from PIL import Image

    rgb = np.asarray(Image.open(KODAK / f"{name}.png").convert("RGB"))
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() / 255, rgb


def measure(codec, x: torch.Tensor, rgb: np.ndarray, effort, seed: int = 0) -> dict:
    from zoo import bitstream
    from zoo.evaluation.metrics import psnr_rgb

    t0 = time.perf_counter()
    data = bitstream.dumps(codec.compress(x, effort=effort, seed=seed))
    seconds = time.perf_counter() - t0
    out = codec.decompress_uint8(bitstream.loads(data))
    h, w = rgb.shape[:2]
    return {"bytes": len(data), "bpp": 8 * len(data) / (h * w), "psnr": psnr_rgb(rgb, out), "seconds": seconds}


_RESULTS: dict[Path, list[tuple[dict, dict]]] = {}  # each results file, read once


def cached(out: Path, key: dict, codec: Callable[[], Any], image: tuple[torch.Tensor, np.ndarray], effort) -> dict:
    """A result from the JSON-lines file, or measure it (with `codec()`, made only then) and append it."""
    if out not in _RESULTS:
        lines = out.read_text().splitlines() if out.exists() else []
        _RESULTS[out] = [(json.loads(rec["key"]), rec["result"]) for rec in map(json.loads, lines)]
    for known, result in _RESULTS[out]:
        if known == key:  # by value: level 1 and level 1.0 are one key
            return result
    result = measure(codec(), image[0], image[1], effort)
    tag = json.dumps(key, sort_keys=True)
    with out.open("a") as f:
        f.write(json.dumps({"key": tag, "result": result}) + "\n")
    _RESULTS[out].append((key, result))
    print(tag, result, flush=True)
    return result


def refinement_key(effort: EffortLevel) -> dict:
    """What identifies a refinement in the results file: its parameters, not the effort's number (whose
    definition may change), so effort 2 reuses the results of a step-count run with the same settings."""
    return {"steps": 0} if effort.steps == 0 else asdict(effort)


def curve(results: list[dict]) -> tuple[list[float], list[float]]:
    return [r["bpp"] for r in results], [r["psnr"] for r in results]


def peak_memory_of_one_batch(entry: str) -> tuple[float, float]:
    """Peak resident memory (GB) of the process after a plain encode and after one refinement of a 1024x1024
    image (one tile at the default tile size: the largest batch the encoder refines at once)."""
    import zoo
    from zoo.refine import EffortLevel, entry_objective, refine_latents

    codec = zoo.load_local(ENTRIES[entry], quality=3)
    x = torch.rand(1, 3, 1024, 1024)
    codec.compress(x[0])
    plain = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    refine_latents(codec.model, x, (1024, 1024), entry_objective(codec.entry), EffortLevel(2, lr=1e-2))
    return plain, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    import zoo
    from zoo.evaluation.bd import bd_psnr, bd_rate
    from zoo.refine import EFFORTS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", nargs="+", default=sorted(ENTRIES), choices=sorted(ENTRIES))
    ap.add_argument("--images", nargs="+", default=list(IMAGES))
    ap.add_argument("--levels", nargs="+", type=float, default=[1, 2, 3, 4, 5, 6, 7, 8])
    ap.add_argument("--efforts", nargs="+", type=int, default=sorted(EFFORTS))
    ap.add_argument("--steps-sweep", action="store_true", help="also measure gain vs refinement steps")
    ap.add_argument("--steps", nargs="+", type=int, default=[25, 50, 100, 200, 500, 1000])
    ap.add_argument("--sweep-level", type=float, default=3.0)
    ap.add_argument(
        "--grid-steps",
        nargs="+",
        type=int,
        default=[],
        help="also run refinements of these step counts (effort 2's lr) over the whole grid, as extra curves",
    )
    ap.add_argument("--classical", action="store_true", help="BD-rate of the hyperprior's efforts vs WebP/JPEG")
    ap.add_argument("--memory", action="store_true", help="peak memory of refining one 1024x1024 tile")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 is fastest on shared cores)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "effort-results.jsonl")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    images = {name: read(name) for name in args.images}
    pixels = sum(rgb.shape[0] * rgb.shape[1] for _, rgb in images.values()) / len(images)

    from zoo.refine import EffortLevel

    runs = [(f"effort {e}", EFFORTS[e]) for e in args.efforts]
    runs += [(f"{n} steps", EffortLevel(n, lr=EFFORTS[2].lr)) for n in args.grid_steps]
    codec_at = cache(lambda entry, level: zoo.load_local(ENTRIES[entry], quality=level))  # one load per level
    for entry in args.entries:
        curves: dict[str, list[dict]] = {}
        for name, effort in runs:
            points = []
            for level in args.levels:
                per = [
                    cached(
                        args.out,
                        {"entry": entry, "level": level, **refinement_key(effort), "image": n},
                        partial(codec_at, entry, level),
                        images[n],
                        effort,
                    )
                    for n in args.images
                ]
                points.append({k: float(np.mean([p[k] for p in per])) for k in ("bpp", "psnr", "seconds")})
            curves[name] = points
        print(f"\n{entry}: {len(args.images)} images ({', '.join(args.images)}), levels {args.levels}")
        print(f"  {'encoder':>10} {'BD-rate vs 0':>13} {'BD-PSNR vs 0':>13} {'s/image':>8} {'s/MP':>7}")
        zero = curves.get("effort 0")
        for name, points in curves.items():
            seconds = float(np.mean([p["seconds"] for p in points]))
            row = f"  {name:>10}"
            if zero and name != "effort 0" and len(points) > 1:  # BD needs two points of each curve
                rate = bd_rate(*curve(zero), *curve(points))
                row += f" {rate:>12.2f}% {bd_psnr(*curve(zero), *curve(points)):>10.3f} dB"
            else:
                row += f" {'-':>13} {'-':>13}"
            print(row + f" {seconds:>8.1f} {seconds / (pixels / 1e6):>7.1f}")
        print(f"\n| level | {' | '.join(curves)} |")
        print(f"| --- |{' --- |' * len(curves)}")
        for i, level in enumerate(args.levels):
            cells = " | ".join(f"{c[i]['bpp']:.4f} bpp, {c[i]['psnr']:.2f} dB" for c in curves.values())
            print(f"| {level:g} | {cells} |")
        secs = " | ".join(f"{np.mean([p['seconds'] for p in c]):,.0f}" for c in curves.values())
        print(f"| seconds per image | {secs} |")
        if args.classical and entry.startswith("bmshj2018-hyperprior"):
            from zoo.evaluation.runner import evaluate_classical

            for name in ("webp", "jpeg"):
                with tempfile.TemporaryDirectory(prefix="zoo-effort-") as tmp:  # the chosen images as a dataset
                    for n in args.images:
                        (Path(tmp) / f"{n}.png").symlink_to(KODAK / f"{n}.png")
                    ref = [s.point for s in evaluate_classical(name, Path(tmp))]
                rates, dists = [p.bpp for p in ref], [p.psnr for p in ref]
                for run, points in curves.items():
                    print(f"  {entry} {run} vs {name}: BD-rate {bd_rate(rates, dists, *curve(points)):.2f}%")
        if args.steps_sweep:
            from zoo import refine

            codec = partial(codec_at, entry, args.sweep_level)
            base = [
                cached(
                    args.out,
                    {"entry": entry, "level": args.sweep_level, "steps": 0, "image": n},
                    codec,
                    images[n],
                    EFFORTS[0],
                )
                for n in args.images
            ]
            for steps in args.steps:
                level = refine.EffortLevel(steps, lr=refine.EFFORTS[2].lr)
                per = [
                    cached(
                        args.out,
                        {"entry": entry, "level": args.sweep_level, **refinement_key(level), "image": n},
                        codec,
                        images[n],
                        level,
                    )
                    for n in args.images
                ]
                d_bpp = np.mean([(p["bpp"] / b["bpp"] - 1) * 100 for p, b in zip(per, base, strict=True)])
                d_psnr = np.mean([p["psnr"] - b["psnr"] for p, b in zip(per, base, strict=True)])
                secs = np.mean([p["seconds"] for p in per])
                print(
                    f"  level {args.sweep_level} steps {steps:>5}: bpp {d_bpp:+.2f}%  PSNR {d_psnr:+.3f} dB  "
                    f"{secs:.1f} s"
                )
    if args.memory:
        plain, refined = peak_memory_of_one_batch(args.entries[0])
        print(f"peak RSS: {plain:.2f} GB after a plain 1024x1024 encode, {refined:.2f} GB after refining it")


if __name__ == "__main__":
    main()
