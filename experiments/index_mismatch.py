"""How often do eager PyTorch and ONNX Runtime disagree on entropy-model table indexes?

    python experiments/index_mismatch.py [--images 6] [--archs bmshj2018-hyperprior mbt2018-mean]

For each architecture and quality (standard widths, random initialisation: no trained entries exist for
most), for each Kodak image: z_hat from the eager encoder, then the table indexes of y computed
(a) naively, by h_s in float32 in each backend, and (b) by zoo's canonical float64 path in each backend.
Autoregressive models (mbt2018, cheng2020-*) are run on a 128x128 centre crop: the decoder's raster loop
computes, at every position, the indexes from the float32 context_prediction and entropy_parameters graphs
in ONNX Runtime and from eager float32 (naive), and zoo's float64 context step (canonical). Prints mismatch
rates for both.

    python experiments/index_mismatch.py --coding [--images 2] [--archs ...]

The coding path itself, on CompressAI's small trained fixtures (../shared/fixtures/compressai, every
architecture with a hyperprior by default) and whole Kodak images: each image is coded by eager zoo (float64
entropy parameters) and decoded by `onnx_everywhere` (every graph, h_s and the context graphs included, in
float32 ONNX Runtime), and the other way round, in both symbol orders for mbt2018 and cheng2020. Counts the
streams whose table indexes differ between the two sides, and those refused; ends with
`everywhere_streams_mismatched=<m> of <n> streams_refused=<r> decoded_despite_mismatch=<s>` (s must be 0).
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from zoo.export.ort_backend import OrtModule, to_onnx_backend
from zoo.imageio import read_image
from zoo.registry import get_arch

KODAK = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "kodak"
FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "compressai"
CODING_ARCHS = (
    "bmshj2018-hyperprior",
    "mbt2018-mean",
    "mbt2018",
    "cheng2020-anchor",
    "cheng2020-attn",
    "cheng2020-anchor-checkerboard",
    "elic2022-official",
    "elic2022-chandelier",
)


def _autoregressive(model, ort_model, folder: Path, x: torch.Tensor, totals: dict) -> None:
    import onnxruntime as ort
    import torch.nn.functional as F

    cpu = ["CPUExecutionProvider"]
    ctx_sess = ort.InferenceSession(str(folder / "context_prediction.onnx"), providers=cpu)
    ep_sess = ort.InferenceSession(str(folder / "entropy_parameters.onnx"), providers=cpu)
    h0, w0 = (x.shape[-2] - 128) // 2, (x.shape[-1] - 128) // 2
    x = x[..., h0 : h0 + 128, w0 : w0 + 128]
    gc = model.gaussian_conditional
    with torch.no_grad():
        y = model.g_a(x)
        z_hat = torch.round(model.h_a(y))
        params = model.entropy_params(z_hat)
        p32 = params.float()
        y_hat = F.pad(y.double(), (2, 2, 2, 2))
        hits = {"naive": 0, "canonical": 0}
        for h in range(y.shape[-2]):
            for w in range(y.shape[-1]):
                crop = y_hat[:, :, h : h + 5, w : w + 5]
                scales, means = model.context_step(crop, params[:, :, h : h + 1, w : w + 1])
                s_ort, _ = ort_model.context_step(crop, params[:, :, h : h + 1, w : w + 1])
                cp = model.context_prediction
                ctx = F.conv2d(crop.float(), cp.masked_weight(), cp.bias)
                eager32 = model.entropy_parameters(torch.cat((p32[:, :, h : h + 1, w : w + 1], ctx), 1))
                # The graph pads the 5x5 crop itself; its centre output is the context at this position.
                ctx_ort = ctx_sess.run(None, {"y_hat": crop.float().numpy()})[0][:, :, 2:3, 2:3]
                ort32 = ep_sess.run(None, {"params": p32[:, :, h : h + 1, w : w + 1].numpy(), "ctx": ctx_ort})[0]
                pairs = {
                    "naive": (eager32.flatten(1).chunk(2, 1)[0], torch.from_numpy(ort32).flatten(1).chunk(2, 1)[0]),
                    "canonical": (scales, s_ort),
                }
                for key, (a, b) in pairs.items():
                    diff = int((gc.build_indexes(a) != gc.build_indexes(b)).sum())
                    totals[key][0] += diff
                    totals[key][1] += a.numel()
                    hits[key] += int(diff > 0)
                q = torch.round(crop[:, :, 2, 2] - means)
                y_hat[:, :, h + 2, w + 2] = q + means
        for key in hits:
            totals[key][2] += int(hits[key] > 0)


@contextmanager
def _recorded_indexes(model) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
    """(scales, table indexes) of every index tensor the model's Gaussian conditionals build, in coding order."""
    from zoo.entropy import GaussianConditional

    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    gcs = [m for m in model.modules() if isinstance(m, GaussianConditional)]
    for gc in gcs:

        def recording(scales, build=gc.build_indexes):
            out = build(scales)
            seen.append((scales.detach().reshape(-1).double().clone(), out.detach().reshape(-1).clone()))
            return out

        gc.build_indexes = recording
    try:
        yield seen
    finally:
        for gc in gcs:
            del gc.build_indexes


def _coding(archs: list[str], images: list[torch.Tensor]) -> None:
    from zoo.errors import BitstreamError
    from zoo.export import export_graphs
    from zoo.export.ort_backend import onnx_everywhere
    from zoo.models.google import JointAutoregressiveHierarchicalPriors
    from zoo.registry import model_from_state_dict

    keys = ("streams", "mismatched", "refused", "silent", "differ", "indexes")
    totals = dict.fromkeys(keys, 0)
    for arch in archs:
        state = torch.load(FIXTURES / arch / "compressai_state_dict.pth", weights_only=True, map_location="cpu")
        model = model_from_state_dict(arch, state).eval()
        with tempfile.TemporaryDirectory() as tmp:
            export_graphs(model, tmp, ("onnx",))
            everywhere = onnx_everywhere(model, tmp)
        autoregressive = isinstance(model, JointAutoregressiveHierarchicalPriors)
        orders = ("wavefront", "raster") if autoregressive else ("wavefront",)
        counts = dict.fromkeys(keys, 0)
        firsts = []  # relative scale difference where the two sides first chose different tables
        for x in images:
            for order in orders:
                for enc, dec in ((model, everywhere), (everywhere, model)):
                    with _recorded_indexes(enc) as enc_seen:
                        streams = enc.compress(x, order=order)
                    with _recorded_indexes(dec) as dec_seen:
                        try:
                            dec.decompress(streams)
                            refused = False
                        except BitstreamError:
                            refused = True
                    (sa, a), (sb, b) = [
                        [torch.cat(t) for t in zip(*seen, strict=True)] for seen in (enc_seen, dec_seen)
                    ]
                    n = min(a.numel(), b.numel())  # a decoder the coder stopped early computed fewer
                    where = (a[:n] != b[:n]).nonzero().flatten()
                    differ = where.numel() + a.numel() - n
                    if where.numel():
                        k = int(where[0])
                        firsts.append(f"{float((sa[k] - sb[k]).abs() / sa[k]):.1e}")
                    outcome = (1, differ > 0, refused, not refused and differ > 0, differ, a.numel())
                    for key, v in zip(keys, outcome, strict=True):
                        counts[key] += int(v)
        print(
            f"{arch} (y in {' and '.join(orders)} order, {len(images)} images, both ways): {counts['mismatched']} "
            f"of {counts['streams']} streams with differing table indexes, {counts['refused']} refused; "
            f"{counts['differ']} of {counts['indexes']} indexes differ (with the knock-on differences after the "
            f"first); relative scale difference at the first: {', '.join(firsts) or '-'}",
            flush=True,
        )
        totals = {key: totals[key] + counts[key] for key in keys}
    print(
        f"everywhere_streams_mismatched={totals['mismatched']} of {totals['streams']} "
        f"streams_refused={totals['refused']} decoded_despite_mismatch={totals['silent']}"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--archs", nargs="+")
    ap.add_argument("--coding", action="store_true", help="the coding path on the CompressAI fixtures (see above)")
    args = ap.parse_args()
    torch.manual_seed(0)
    images = [read_image(p)[0][None] for p in sorted(KODAK.glob("*.png"))[: args.images]]
    if args.coding:
        _coding(args.archs or list(CODING_ARCHS), images)
        return
    args.archs = args.archs or ["bmshj2018-hyperprior", "mbt2018-mean", "mbt2018", "cheng2020-anchor", "cheng2020-attn"]
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
                if spec.autoregressive:
                    for x in images:
                        _autoregressive(model, ort_model, Path(tmp), x, totals)
                    print(
                        f"{arch} q{q}: naive float32 mismatches so far {totals['naive'][0]}, canonical "
                        f"{totals['canonical'][0]}",
                        flush=True,
                    )
                    continue
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
