"""Eager PyTorch vs ONNX Runtime: encode and decode time per Kodak image, entropy coding included.

    python benchmarks/backends.py [--images 6] [--threads 2] [--entry DIR]

Uses the released bmshj2018-hyperprior q3 entry when given (else a randomly initialised q3 model, same
widths and cost). Ends with `eager_ms=<x> onnx_ms=<y> ratio=<y/x>` (encode + decode, mean per image).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from zoo import bitstream
from zoo.codec import Codec
from zoo.compressed import EntryId
from zoo.export.ort_backend import to_onnx_backend
from zoo.imageio import read_image

KODAK = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "kodak"


def codec_for(entry: str | None) -> Codec:
    if entry:
        import zoo
        from zoo.mirror import entry_folder

        return zoo.load_local(entry_folder(entry))
    from zoo.registry import create_model

    model = create_model("bmshj2018-hyperprior", 3).eval()
    model.update()
    return Codec(model, EntryId("bmshj2018-hyperprior", 3, "mse", "random"), bytes(16))


def time_codecs(codecs: list[Codec], images: list[torch.Tensor], repeats: int) -> list[tuple[float, float]]:
    """Mean over images of the best (encode ms, decode ms) per codec. The codecs take turns on each image, so a
    slower or faster spell of a shared machine falls on all of them alike."""
    best = [[[float("inf"), float("inf")] for _ in images] for _ in codecs]
    for i, x in enumerate(images):
        for _ in range(repeats):
            for c, codec in enumerate(codecs):
                t0 = time.perf_counter()
                data = bitstream.dumps(codec.compress(x))
                t1 = time.perf_counter()
                codec.decompress(bitstream.loads(data))
                t2 = time.perf_counter()
                b = best[c][i]
                b[0], b[1] = min(b[0], t1 - t0), min(b[1], t2 - t1)
    return [(1e3 * sum(b[0] for b in per) / len(images), 1e3 * sum(b[1] for b in per) / len(images)) for per in best]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--entry")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    images = [read_image(p)[0] for p in sorted(KODAK.glob("*.png"))[: args.images]]
    eager = codec_for(args.entry)
    onnx = Codec(to_onnx_backend(eager.model, threads=args.threads), eager.entry, eager.fingerprint)
    time_codecs([eager, onnx], images[:1], 1)  # warm-up
    (e_enc, e_dec), (o_enc, o_dec) = time_codecs([eager, onnx], images, args.repeats)
    print(f"{eager.entry}, {len(images)} Kodak images, torch threads = ORT intra-op threads = {args.threads}")
    print(f"eager: encode {e_enc:.1f} ms  decode {e_dec:.1f} ms")
    print(f"onnx:  encode {o_enc:.1f} ms  decode {o_dec:.1f} ms")
    eager_ms, onnx_ms = e_enc + e_dec, o_enc + o_dec
    print(f"eager_ms={eager_ms:.1f} onnx_ms={onnx_ms:.1f} ratio={onnx_ms / eager_ms:.3f}")


if __name__ == "__main__":
    main()
