"""Rate and quality cost of tiling on Kodak: forced small tiles vs one tile per image.

    python benchmarks/tiling.py [--entry DIR] [--tile 256] [--images 24]

Ends with `untiled_bpp=<a> tiled_bpp=<b> bpp_cost_pct=<c> psnr_cost_db=<d>`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
KODAK = REPO.parent / "shared" / "datasets" / "kodak"
DEFAULT_ENTRY = REPO / "model_store" / "entries" / "bmshj2018-hyperprior" / "q3-mse" / "v1.0"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entry", default=str(DEFAULT_ENTRY))
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--images", type=int, default=24)
    args = ap.parse_args()

    import zoo
    from zoo import bitstream
    from zoo.evaluation.metrics import psnr_rgb
    from zoo.imageio import read_image, to_uint8

    whole = zoo.load_local(args.entry, tile_size=0)
    tiled = zoo.load_local(args.entry, tile_size=args.tile)
    rows = {"untiled": [], "tiled": []}
    for p in sorted(KODAK.glob("*.png"))[: args.images]:
        x, _ = read_image(p)
        ref = to_uint8(x)
        for key, codec in (("untiled", whole), ("tiled", tiled)):
            data = bitstream.dumps(codec.compress(x))
            rec = to_uint8(codec.decompress(bitstream.loads(data)))
            rows[key].append((8 * len(data) / (ref.shape[0] * ref.shape[1]), psnr_rgb(ref, rec)))
    u, t = np.mean(rows["untiled"], axis=0), np.mean(rows["tiled"], axis=0)
    print(f"{whole.entry} on {len(rows['tiled'])} Kodak images, tiles of {args.tile} px vs none")
    print(f"untiled: {u[0]:.4f} bpp {u[1]:.2f} dB; tiled: {t[0]:.4f} bpp {t[1]:.2f} dB")
    print(
        f"untiled_bpp={u[0]:.4f} tiled_bpp={t[0]:.4f} bpp_cost_pct={100 * (t[0] / u[0] - 1):.2f} "
        f"psnr_cost_db={u[1] - t[1]:.3f}"
    )


if __name__ == "__main__":
    main()
