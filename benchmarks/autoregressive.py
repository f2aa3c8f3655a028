"""What the context model costs: encode and decode time of one Kodak image through mbt2018 and cheng2020-anchor
beside the hyperprior, at equal widths (N = M = 192: mbt2018's qualities 1-4, cheng2020-anchor's 4-6), random
weights with tables (time hardly depends on training; g_a's last layer is scaled up so that the latent is not all
zeros). Context models code wavefront by wavefront (format 2).

    python benchmarks/autoregressive.py [--image kodim23.png] [--threads 2] [--repeats 2] [--serial]

Each figure is the best of --repeats runs through the Codec API; the process's CPU seconds, which move less when
other work shares the cores, come with their ratios before the last lines. Ends with, for each context model and
for decode then encode, `hyperprior_dec_s=<a> mbt2018_dec_s=<b> ratio=<b/a>` (targets, issue 18: mbt2018 <= 2,
cheng2020-anchor <= 3). --serial also times mbt2018 in raster order (format 1, one position per step).

    python benchmarks/autoregressive.py --shipped [--level 3]

times the shipped variable-rate entries instead (the newest release of each family in model_store/entries, at one
level: the trained weights, so real latents), and ends with `hyperprior_dec_s=<a> mbt2018_vr_dec_s=<b>
ratio=<b/a>` against bmshj2018-hyperprior-vr at the same level (target: mbt2018-vr <= 1.5).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
KODAK = Path(os.environ.get("ZOO_SHARED") or REPO.parent / "shared") / "datasets" / "kodak"
SHIPPED = ("bmshj2018-hyperprior-vr", "mbt2018-mean-vr", "mbt2018-vr")
WIDTHS = {"bmshj2018-hyperprior": {"N": 192, "M": 192}, "mbt2018": {"N": 192, "M": 192}, "cheng2020-anchor": {"N": 192}}


def _best(fn, repeats: int, cpu: list[float] | None = None) -> tuple[float, object]:
    """Best wall-clock seconds of `repeats` runs, and the result; appends the best CPU seconds to `cpu`."""
    best, best_cpu, out = float("inf"), float("inf"), None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        best, best_cpu = min(best, time.perf_counter() - t0), min(best_cpu, time.process_time() - c0)
    if cpu is not None:
        cpu.append(best_cpu)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--image", default="kodim23.png")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--gain", type=float, default=10.0, help="scale of g_a's last layer (latent size)")
    ap.add_argument("--serial", action="store_true", help="also time mbt2018 in raster order (slow)")
    ap.add_argument("--shipped", action="store_true", help="time the shipped variable-rate entries instead")
    ap.add_argument("--level", type=float, default=3.0, help="with --shipped: the level to code at")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.shipped:
        shipped(args)
        return

    from zoo.codec import Codec
    from zoo.compressed import EntryId
    from zoo.imageio import read_image
    from zoo.registry import create_model

    x, _ = read_image(KODAK / args.image)
    enc: dict[str, float] = {}
    dec: dict[str, float] = {}
    cpu: dict[str, list[float]] = {}  # arch -> [encode, decode] CPU seconds of this process
    for arch, widths in WIDTHS.items():
        torch.manual_seed(0)
        model = create_model(arch, **widths).eval()
        with torch.no_grad():  # random weights give an all-zero latent: scale it so the coder has work
            model.g_a[-1].weight.mul_(args.gain)
        model.update()
        codec = Codec(model, EntryId(arch, 3, "mse", "random"), bytes(16))
        enc[arch], c = _best(lambda: codec.compress(x), args.repeats, cpu.setdefault(arch, []))  # noqa: B023
        dec[arch], _ = _best(lambda: codec.decompress(c), args.repeats, cpu[arch])  # noqa: B023
        with torch.no_grad():  # the synthesis transform alone: what no entropy model can speed up
            y = model.g_a(codec._pad(x[None]))
            t_gs, _ = _best(lambda: model.g_s(y), 1)  # noqa: B023
        print(
            f"{arch} {widths}: encode {enc[arch]:.2f} s, decode {dec[arch]:.2f} s (g_s alone {t_gs:.2f} s), "
            f"{c.payload_bytes} bytes"
        )
        if args.serial and arch == "mbt2018":
            batch = codec._pad(x[None])
            t_enc, (latents,) = _best(lambda: model.compress(batch, order="raster"), 1)  # noqa: B023
            t_dec, _ = _best(lambda: model.decompress([latents], order="raster"), 1)  # noqa: B023
            print(f"mbt2018 in raster order (format 1): encode {t_enc:.2f} s, decode {t_dec:.2f} s")
    base = "bmshj2018-hyperprior"
    for arch in ("mbt2018", "cheng2020-anchor"):  # CPU time moves less than wall time when others share the cores
        (a_enc, a_dec), (b_enc, b_dec) = cpu[base], cpu[arch]
        print(
            f"{arch} CPU seconds: decode {b_dec:.2f} ({b_dec / a_dec:.2f}x the hyperprior's {a_dec:.2f}), "
            f"encode {b_enc:.2f} ({b_enc / a_enc:.2f}x {a_enc:.2f})"
        )
    for arch in ("mbt2018", "cheng2020-anchor"):
        key = arch.replace("-", "_")
        for what, times in (("dec", dec), ("enc", enc)):
            a, b = times[base], times[arch]
            print(f"hyperprior_{what}_s={a:.2f} {key}_{what}_s={b:.2f} ratio={b / a:.2f}")


def shipped(args: argparse.Namespace) -> None:
    """Encode and decode time of the newest shipped release of each variable-rate family at one level."""
    import zoo
    from zoo import bitstream
    from zoo.imageio import read_image
    from zoo.train.recipe import newest_release

    x, _ = read_image(KODAK / args.image)
    dec: dict[str, float] = {}
    for arch in SHIPPED:
        path = newest_release(arch)
        if path is None or not (REPO / path).is_dir():
            print(f"{arch}: not shipped in model_store/entries")
            continue
        codec = zoo.load_local(REPO / path, quality=args.level)
        t_enc, c = _best(lambda: codec.compress(x), args.repeats)  # noqa: B023
        dec[arch], _ = _best(lambda: codec.decompress(c), args.repeats)  # noqa: B023
        bpp = 8 * len(bitstream.dumps(c)) / (x.shape[-1] * x.shape[-2])  # the real file, header included
        print(f"{path} level {args.level:g}: encode {t_enc:.2f} s, decode {dec[arch]:.2f} s, {bpp:.3f} bpp")
    base = "bmshj2018-hyperprior-vr"
    for arch in SHIPPED[1:]:
        if base in dec and arch in dec:
            key = arch.replace("-", "_")
            print(f"hyperprior_dec_s={dec[base]:.2f} {key}_dec_s={dec[arch]:.2f} ratio={dec[arch] / dec[base]:.2f}")


if __name__ == "__main__":
    main()
