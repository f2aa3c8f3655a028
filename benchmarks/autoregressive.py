"""What the sequential context loop costs: encode and decode time of one Kodak image through mbt2018 and
cheng2020-anchor (standard quality-3 widths, random weights with tables; time does not depend on training).

    python benchmarks/autoregressive.py [--image kodim23.png] [--threads 2]

Ends with `positions=<n> mbt2018_encode_s=<a> mbt2018_decode_s=<b> cheng2020_decode_s=<c> us_per_position=<d>`
(d: mbt2018 decode time per latent position).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
KODAK = REPO.parent / "shared" / "datasets" / "kodak"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--image", default="kodim23.png")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from zoo.codec import Codec
    from zoo.compressed import EntryId
    from zoo.imageio import read_image
    from zoo.registry import create_model

    x, _ = read_image(KODAK / args.image)
    times: dict[str, tuple[float, float]] = {}
    positions = 0
    for arch in ("mbt2018", "cheng2020-anchor"):
        torch.manual_seed(0)
        model = create_model(arch, 3).eval()
        model.update()
        codec = Codec(model, EntryId(arch, 3, "mse", "random"), bytes(16))
        t0 = time.perf_counter()
        c = codec.compress(x)
        t1 = time.perf_counter()
        codec.decompress(c)
        t2 = time.perf_counter()
        times[arch] = (t1 - t0, t2 - t1)
        positions = (x.shape[1] // 16) * (x.shape[2] // 16)
        print(f"{arch}: encode {t1 - t0:.2f} s, decode {t2 - t1:.2f} s for {positions} positions")
    enc, dec = times["mbt2018"]
    print(
        f"positions={positions} mbt2018_encode_s={enc:.2f} mbt2018_decode_s={dec:.2f} "
        f"cheng2020_decode_s={times['cheng2020-anchor'][1]:.2f} us_per_position={1e6 * dec / positions:.0f}"
    )


if __name__ == "__main__":
    main()
