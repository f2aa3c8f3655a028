"""Peak memory of tiled coding: a 6000x4000 image through bmshj2018-hyperprior (quality-3 widths) on CPU.

    python benchmarks/large_image.py [--entry DIR] [--width 6000] [--height 4000]

Encode and decode each run in a fresh subprocess; peak RSS is that process's ru_maxrss. Ends with
`encode_peak_rss_gb=<x> decode_peak_rss_gb=<y> bpp=<z>`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import resource, sys, time, torch
import zoo
from zoo.mirror import entry_folder
from zoo import bitstream
from zoo.codec import Codec
from zoo.compressed import EntryId
mode, entry, path, w, h = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(2)
if entry:
    codec = zoo.load_local(entry_folder(entry))
else:
    from zoo.registry import create_model
    torch.manual_seed(0)  # before construction: encode and decode processes must build the same weights
    m = create_model("bmshj2018-hyperprior", 3).eval(); m.update()
    codec = Codec(m, EntryId("bmshj2018-hyperprior", 3, "mse", "random"), bytes(16))
t0 = time.perf_counter()
if mode == "encode":
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    x = torch.stack([yy, xx, (yy + xx) / 2]) * 0.8 + 0.2 * torch.rand(3, h, w, generator=g)
    open(path, "wb").write(bitstream.dumps(codec.compress(x)))
else:
    x_hat = codec.decompress(bitstream.loads(open(path, "rb").read()))
    assert x_hat.shape == (1, 3, h, w)
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024
print(f"{rss:.3f} {time.perf_counter() - t0:.1f}")
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entry", default="")
    ap.add_argument("--width", type=int, default=6000)
    ap.add_argument("--height", type=int, default=4000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "big.zoo")
        out = {}
        for mode in ("encode", "decode"):
            res = subprocess.run(
                [sys.executable, "-c", CHILD, mode, args.entry, path, str(args.width), str(args.height)],
                capture_output=True,
                text=True,
            )
            if res.returncode != 0:
                sys.exit(f"{mode} failed:\n{res.stderr.strip()}")
            rss, secs = res.stdout.split()
            out[mode] = float(rss)
            print(f"{mode}: peak RSS {float(rss):.2f} GB, {secs} s")
        size = Path(path).stat().st_size
    bpp = 8 * size / (args.width * args.height)
    print(f"{args.width}x{args.height}, tiles of 1024 px")
    print(f"encode_peak_rss_gb={out['encode']:.2f} decode_peak_rss_gb={out['decode']:.2f} bpp={bpp:.4f}")


if __name__ == "__main__":
    main()
