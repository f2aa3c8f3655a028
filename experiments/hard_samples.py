"""Does hard-sample mode help? Two short runs from the same start, equal steps, uniform vs hard sampling.

    python experiments/hard_samples.py [--steps 300] [--arch bmshj2018-hyperprior] [--quality 3]

Trains small-width models (N=M=64) on 128-px crops of shared/datasets/photos 001-035 and validates on
036-039 with real bitstreams. Ends with `uniform_val_loss=<a> hard_val_loss=<b> delta_pct=<c>`.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from zoo.train.trainer import TrainConfig, train

PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "photos"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--arch", default="bmshj2018-hyperprior")
    ap.add_argument("--quality", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "train").mkdir()
        (root / "val").mkdir()
        for p in sorted(PHOTOS.glob("*.png")):
            (root / ("val" if p.stem >= "036" else "train") / p.name).symlink_to(p)
        losses = {}
        for mode in ("uniform", "hard"):
            cfg = TrainConfig(
                arch=args.arch,
                quality=args.quality,
                train_dir=str(root / "train"),
                val_dir=str(root / "val"),
                out=str(root / mode),
                steps=args.steps,
                batch_size=8,
                patch=128,
                lr=5e-4,
                val_every=args.steps,
                workers=0,
                seed=1,
                quiet=True,
                widths={"N": 64, "M": 64},
                hard_samples=mode == "hard",
                scheduler="cosine",
            )
            val = train(cfg)
            losses[mode] = val["loss"]
            print(f"{mode}: val loss {val['loss']:.4f} (bpp {val['bpp']:.4f}, PSNR {val['psnr']:.2f} dB)")
    delta = 100 * (losses["hard"] / losses["uniform"] - 1)
    print(f"uniform_val_loss={losses['uniform']:.4f} hard_val_loss={losses['hard']:.4f} delta_pct={delta:+.2f}")


if __name__ == "__main__":
    main()
