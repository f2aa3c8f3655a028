"""Rate–distortion plots (PNG) of our runs beside published reference curves."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from zoo.evaluation.runner import RDPoint

REFERENCE_CSV = "data/compressai_kodak_rd.csv"


def reference_curves(names: Sequence[str] | None = None) -> dict[str, list[tuple[float, float, float]]]:
    """Published Kodak curves kept by the project: name -> [(bpp, psnr, ms_ssim)] (see zoo/data/SOURCES.md)."""
    text = resources.files("zoo").joinpath(REFERENCE_CSV).read_text()
    curves: dict[str, list[tuple[float, float, float]]] = {}
    for row in csv.DictReader(text.splitlines()):
        if names is None or row["codec"] in names:
            curves.setdefault(row["codec"], []).append(
                (float(row["bpp"]), float(row["psnr"]), float(row["ms_ssim"] or "nan"))
            )
    return {k: sorted(v) for k, v in curves.items()}


def rd_plot(
    series: dict[str, list[RDPoint]],
    out: str | Path,
    references: Sequence[str] = (),
    metric: str = "psnr",
    title: str = "Kodak",
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5), dpi=110)
    for name, curve in reference_curves(references).items():
        xs, ys = [p[0] for p in curve], [p[1] if metric == "psnr" else p[2] for p in curve]
        ax.plot(xs, ys, "--", alpha=0.6, label=f"{name} (published)")
    for name, points in series.items():
        pts = sorted(points, key=lambda p: p.bpp)
        ax.plot([p.bpp for p in pts], [p.psnr if metric == "psnr" else p.ms_ssim for p in pts], "o-", label=name)
    ax.set_xlabel("bits per pixel (file size)")
    ax.set_ylabel("PSNR-RGB (dB), 8-bit reconstruction" if metric == "psnr" else "MS-SSIM-RGB")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
