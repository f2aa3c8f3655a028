"""How often do eager PyTorch and ONNX Runtime disagree on entropy-model table indexes?

    python benchmarks/index_mismatch.py [--images 6] [--archs bmshj2018-hyperprior mbt2018-mean]

For each architecture and quality (standard widths, random initialisation: no trained entries exist for
most), for each Kodak image: z_hat from the eager encoder, then the table indexes of y computed
(a) naively, by h_s in float32 in each backend, and (b) by zoo's canonical float64 path in each backend.
Prints per-element and per-image mismatch rates for both.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from zoo.export.ort_backend import OrtModule, to_onnx_backend
from zoo.imageio import read_image
from zoo.registry import get_arch

KODAK = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "kodak"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--archs", nargs="+", default=["bmshj2018-hyperprior", "mbt2018-mean"])
    args = ap.parse_args()
    torch.manual_seed(0)
    images = [read_image(p)[0][None] for p in sorted(KODAK.glob("*.png"))[: args.images]]
    totals = {"naive": [0, 0, 0], "canonical": [0, 0, 0]}  # element mismatches, elements, images hit
    for arch in args.archs:
        spec = get_arch(arch)
        for q in spec.qualities:
            model = spec.model_class(**spec.widths(q)).eval()
            model.update()
            with tempfile.TemporaryDirectory() as tmp:
                ort_model = to_onnx_backend(model, cache_dir=tmp)
                ort_h_s = OrtModule(Path(tmp) / "h_s.onnx")
                gc = model.gaussian_conditional
                for x in images:
                    with torch.no_grad():
                        z = model.h_a(model.g_a(x).abs() if arch == "bmshj2018-hyperprior" else model.g_a(x))
                        z_hat = model.entropy_bottleneck.quantize(
                            z, "dequantize", model.entropy_bottleneck.medians().reshape(1, -1, 1, 1)
                        )
                        naive = [model.h_s(z_hat), ort_h_s(z_hat)]
                        canon = [model.entropy_params(z_hat), ort_model.entropy_params(z_hat)]
                    for key, (a, b) in (("naive", naive), ("canonical", canon)):
                        ia = gc.build_indexes(a.chunk(2, 1)[0] if a.shape[1] != model.M else a)
                        ib = gc.build_indexes(b.chunk(2, 1)[0] if b.shape[1] != model.M else b)
                        diff = int((ia != ib).sum())
                        totals[key][0] += diff
                        totals[key][1] += ia.numel()
                        totals[key][2] += int(diff > 0)
            print(
                f"{arch} q{q}: naive float32 mismatches so far {totals['naive'][0]}, canonical "
                f"{totals['canonical'][0]}",
                flush=True,
            )
    n_images = len(images) * sum(len(get_arch(a).qualities) for a in args.archs)
    for key, (mis, n, hit) in totals.items():
        print(f"{key}: {mis}/{n} indexes differ ({mis / n:.2e}); {hit}/{n_images} images with any difference")
    print(
        f"naive_image_mismatch_rate={totals['naive'][2] / n_images:.4f} "
        f"canonical_image_mismatch_rate={totals['canonical'][2] / n_images:.4f}"
    )


if __name__ == "__main__":
    main()
