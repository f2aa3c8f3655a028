"""What the parallel context models cost: encode and decode time of one Kodak image through the checkerboard and
ELIC architectures beside the hyperprior's (standard widths, random weights with tables; the time is that of the
networks and of coding, which training does not change).

    python benchmarks/context_models.py [--image kodim23.png] [--threads 2] [--repeat 1]

The hyperprior runs at quality 3 (N=128, M=192: the checkerboard's quality-3 width is N=128) and quality 6
(N=192, M=320: ELIC's only widths). Each model is warmed up on a 64x64 crop first. Ends with one line per
architecture, `<arch>_enc_s=<a> <arch>_dec_s=<b> dec_ratio=<b / hyperprior's decode at the same widths>
dec_cpu_s=<c> cpu_ratio=<c / the hyperprior's>`: wall-clock seconds, and the process's CPU seconds, which move less
when other work shares the cores.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
KODAK = REPO.parent / "shared" / "datasets" / "kodak"

# (architecture, quality, the hyperprior run at the same widths)
RUNS = (
    ("bmshj2018-hyperprior", 3, None),
    ("cheng2020-anchor-checkerboard", 3, "bmshj2018-hyperprior@3"),
    ("bmshj2018-hyperprior", 6, None),
    ("elic2022-official", 6, "bmshj2018-hyperprior@6"),
    ("elic2022-chandelier", 6, "bmshj2018-hyperprior@6"),
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--image", default="kodim23.png")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1, help="timed runs per model (the median is reported)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from zoo.codec import Codec
    from zoo.compressed import EntryId
    from zoo.imageio import read_image
    from zoo.registry import create_model, get_arch

    x, _ = read_image(KODAK / args.image)
    times: dict[str, tuple[float, float, float]] = {}
    for arch, quality, _ in RUNS:
        torch.manual_seed(0)
        model = create_model(arch, quality).eval()
        model.update()
        codec = Codec(model, EntryId(arch, quality, "mse", "random"), bytes(16))
        codec.decompress(codec.compress(x[:, :64, :64]))  # warm-up: float64 copies, coder tables
        enc, dec, cpu = [], [], []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            c = codec.compress(x)
            t1, c1 = time.perf_counter(), time.process_time()
            codec.decompress(c)
            t2, c2 = time.perf_counter(), time.process_time()
            enc.append(t1 - t0)
            dec.append(t2 - t1)
            cpu.append(c2 - c1)
        key = f"{arch}@{quality}"
        times[key] = (statistics.median(enc), statistics.median(dec), statistics.median(cpu))
        print(
            f"{key} {get_arch(arch).widths(quality)}: encode {times[key][0]:.2f} s, decode {times[key][1]:.2f} s, "
            f"{len(c.tiles[0].streams)} streams",
            flush=True,
        )
    for arch, quality, reference in RUNS:
        enc, dec, cpu = times[f"{arch}@{quality}"]
        ratio = f" dec_ratio={dec / times[reference][1]:.2f}" if reference else ""
        cpu_ratio = f" cpu_ratio={cpu / times[reference][2]:.2f}" if reference else ""
        name = f"{arch.replace('-', '_')}_q{quality}"
        print(f"{name}_enc_s={enc:.2f} {name}_dec_s={dec:.2f}{ratio} {name}_dec_cpu_s={cpu:.2f}{cpu_ratio}")


if __name__ == "__main__":
    main()
