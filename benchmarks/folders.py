"""Throughput of folder encoding: `zoo encode DIR OUT` with 1 and 2 workers against one `zoo encode` call per image.

    python benchmarks/folders.py [--entry DIR] [--copies 4] [--calls N] [--workers 1,2]

The folder is the 24 Kodak images linked `--copies` times (96 images, 768x512) into a temporary folder. The
one-call-per-image baseline runs the first `--calls` images (default: all) and reports per-image figures, so a
shorter baseline still compares. Each line: `mode=<m> images=<n> seconds=<s> images_per_s=<r> mp_per_s=<r>`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KODAK = Path(os.environ.get("ZOO_SHARED") or REPO.parent / "shared") / "datasets" / "kodak"
DEFAULT_ENTRY = REPO / "model_store" / "entries" / "bmshj2018-hyperprior" / "q1-mse" / "v1.1"


def zoo_cli(*args: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    subprocess.run([sys.executable, "-m", "zoo.cli", *args], check=True, env=env, stdout=subprocess.DEVNULL)


def report(mode: str, images: int, megapixels: float, seconds: float) -> None:
    print(
        f"mode={mode} images={images} seconds={seconds:.1f} images_per_s={images / seconds:.3f} "
        f"mp_per_s={megapixels / seconds:.3f}",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entry", default=str(DEFAULT_ENTRY))
    ap.add_argument("--copies", type=int, default=4)
    ap.add_argument("--calls", type=int, help="images for the one-call-per-image baseline (default: all)")
    ap.add_argument("--workers", default="1,2")
    args = ap.parse_args()

    from PIL import Image

    kodak = sorted(KODAK.glob("kodim*.png"))
    if len(kodak) != 24:
        sys.exit(f"expected the 24 Kodak images in {KODAK}")
    with tempfile.TemporaryDirectory(prefix="zoo-folders-") as tmp:
        src = Path(tmp) / "in"
        src.mkdir()
        images: list[Path] = []
        for copy in range(args.copies):
            for p in kodak:
                link = src / f"{p.stem}-{copy}.png"
                link.symlink_to(p)
                images.append(link)
        mp = {p: Image.open(p).size[0] * Image.open(p).size[1] / 1e6 for p in images}
        print(f"entry={args.entry} images={len(images)} megapixels={sum(mp.values()):.2f} cpus={os.cpu_count()}")
        for workers in [int(w) for w in args.workers.split(",")]:
            out = Path(tmp) / f"out-{workers}"
            t0 = time.perf_counter()
            zoo_cli("encode", str(src), str(out), "--model", args.entry, "--workers", str(workers), "--quiet")
            report(f"folder_workers_{workers}", len(images), sum(mp.values()), time.perf_counter() - t0)
        calls = images[: args.calls or len(images)]
        out = Path(tmp) / "out-calls"
        out.mkdir()
        t0 = time.perf_counter()
        for p in calls:
            zoo_cli("encode", str(p), str(out / f"{p.stem}.zoo"), "--model", args.entry, "--quiet")
        report("one_call_per_image", len(calls), sum(mp[p] for p in calls), time.perf_counter() - t0)


if __name__ == "__main__":
    main()
