"""Add a released variable-rate entry to the learning curve (docs/results/learning_curve.json).

    python scripts/learning_point.py [--curve JSON] model_store/entries/bmshj2018-hyperprior-vr/mse/v1.4 [more...]

Reads the entry's card (config.json): its Kodak figures at every level give the PSNR at 0.5 bpp (the same
log-rate interpolation as benchmarks/rd_report.py), its `total_cpu_hours` the compute behind it. A point for the
same architecture and version is replaced, so a re-run is harmless. Then `python benchmarks/rd_report.py`
redraws the table and the projection.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.rd_report import psnr_at  # noqa: E402
from zoo.entry import read_config  # noqa: E402
from zoo.errors import ZooError  # noqa: E402

CURVE = ROOT / "docs" / "results" / "learning_curve.json"


def _init_name(init: str) -> str:
    """How a note names a warm start: an entry folder by its version, a checkpoint by its run and file."""
    path = Path(init)
    return f"{path.parent.name}/{path.name}" if path.suffix == ".pt" else (path.name or "?")


def point(folder: Path) -> dict:
    """The learning-curve point of one released variable-rate entry folder."""
    card = read_config(folder)
    figures = [lv["kodak"] for lv in card.levels.values() if "kodak" in lv]
    train = card.training
    if len(figures) < 2 or "total_cpu_hours" not in train:
        raise ZooError(f"{folder}: needs Kodak figures at two levels or more and training.total_cpu_hours in its card")
    psnr = psnr_at([f["bpp"] for f in figures], [f["psnr"] for f in figures])
    if psnr != psnr:  # NaN: 0.5 bpp outside the curve
        raise ZooError(f"{folder}: its Kodak curve does not reach 0.5 bpp")
    lineage, own = train.get("lineage_cpu_hours", 0.0), train.get("cpu_hours", 0.0)
    steps = train.get("checkpoint_step", train.get("steps", "?"))
    return {
        "arch": card.entry.arch,
        "curve": f"v{card.entry.version}, every level",
        "cpu_hours": round(float(train["total_cpu_hours"]), 2),
        "gpu_minutes": round(float(train.get("total_gpu_minutes", 0.0)), 1),
        "psnr_at_0.5": round(psnr, 3),
        "note": (
            f"{lineage:.2f} core-hours of lineage + {own:.2f} of its run ({steps} steps from "
            f"{_init_name(str(train.get('init', '?')))}); process CPU time, total_cpu_hours in the card"
            + (
                f"; and {train['total_gpu_minutes']:.1f} GPU minutes (total_gpu_minutes)"
                if train.get("total_gpu_minutes")
                else ""
            )
        ),
    }


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="learning_point.py", description="add released entries to the learning curve")
    ap.add_argument("entries", nargs="+", help="released variable-rate entry folders")
    ap.add_argument("--curve", type=Path, default=CURVE, help="the learning-curve file (default: %(default)s)")
    args = ap.parse_args(argv)
    points = json.loads(args.curve.read_text()) if args.curve.exists() else []
    for name in args.entries:
        try:
            p = point(Path(name))
        except (ZooError, OSError, KeyError, ValueError) as exc:
            print(f"learning_point: error: {exc}", file=sys.stderr)
            return 1
        points = [q for q in points if (q["arch"], q["curve"]) != (p["arch"], p["curve"])] + [p]
        print(f"{p['arch']} {p['curve']}: {p['cpu_hours']} core-hours, {p['psnr_at_0.5']:.2f} dB at 0.5 bpp")
    args.curve.write_text(json.dumps(points, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
