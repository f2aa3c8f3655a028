"""Does a decoded image depend on torch's thread count, and what would making it not cost?

    python benchmarks/thread_determinism.py [--arch bmshj2018-hyperprior] [--size 512] [--threads 1 2 4]

Encodes a crop of kodim23 with a CompressAI fixture model (or --entry) once, then decodes the same stream
with each thread count, with oneDNN (mkldnn) convolutions on (torch's default) and off, and prints per
setting the decode time (best of --repeat, wall and CPU) and how many samples differ, and by how much, from
the decode with the first thread count and the same setting.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def main() -> None:
    from tests.support import fixture_codec, kodak_image

    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="bmshj2018-hyperprior", help="a CompressAI fixture model")
    ap.add_argument("--entry", help="an entry folder instead (e.g. model_store/entries/...)")
    ap.add_argument("--quality", type=float, help="the level of a variable-rate --entry")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeat", type=int, default=3, help="decodes per setting; the best time is shown")
    args = ap.parse_args()
    if args.entry:
        import zoo

        codec = zoo.load_local(args.entry, quality=args.quality)
    else:
        codec = fixture_codec(args.arch)
    x = kodak_image()[:, : args.size, : args.size]
    stream = codec.compress(x)
    for mkldnn in (True, False):
        reference = None
        for threads in args.threads:
            torch.set_num_threads(threads)
            with torch.backends.mkldnn.flags(enabled=mkldnn):
                times, cpu = [], []
                for _ in range(args.repeat):
                    t0, c0 = time.perf_counter(), time.process_time()
                    image = codec.decompress_uint8(stream)
                    times.append(time.perf_counter() - t0)
                    cpu.append(time.process_time() - c0)
            if reference is None:
                reference = image
            delta = np.abs(image.astype(np.int16) - reference.astype(np.int16))
            diff, largest = int(np.count_nonzero(delta)), int(delta.max())
            print(
                f"mkldnn={'on ' if mkldnn else 'off'} threads={threads}: "
                f"decode {min(times):.3f} s ({min(cpu):.3f} CPU s), "
                f"{diff} of {image.size} samples differ (by at most {largest}) from threads={args.threads[0]} "
                "(same mkldnn setting)"
            )


if __name__ == "__main__":
    main()
