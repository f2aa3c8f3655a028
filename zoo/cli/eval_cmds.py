"""`zoo eval`, `zoo bench`, `zoo bd`: rate–distortion figures of learned and classical codecs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from zoo.errors import InputError


def parse_qualities(text: str | None) -> list[int | None]:
    """ "3", "1-8" or "1,3,5" -> list of ints; None -> [None] (the entry decides)."""
    if not text:
        return [None]
    out: list[int | None] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            out += list(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise InputError(f"--quality takes N, N-M or N,M,...; got {text!r}") from None
    return out


class _Loader:
    """Picklable recipe for a codec, so worker processes can load their own copy."""

    def __init__(
        self, model: str, quality: int | None, metric: str, version: str | None, backend: str, arch: str | None
    ):
        self.args = (model, quality, metric, version, backend, arch)

    def __call__(self):
        import zoo

        model, quality, metric, version, backend, arch = self.args
        path = Path(model)
        if path.is_dir():
            return zoo.load_local(path, backend=backend)
        if path.is_file():  # a CompressAI checkpoint
            import torch

            from zoo.codec import Codec
            from zoo.compressed import EntryId
            from zoo.entry import weights_fingerprint
            from zoo.registry import model_from_state_dict

            if not arch:
                raise InputError("a checkpoint file needs --arch")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
            state = ckpt.get("state_dict", ckpt)
            m = model_from_state_dict(arch, state)
            if not m.has_tables:
                m.update(force=True)
            return Codec(m.eval(), EntryId(arch, quality or 0, metric, path.stem), weights_fingerprint(m.state_dict()))
        return zoo.load(model, quality=quality, metric=metric, version=version, backend=backend)


def cmd_eval(args: argparse.Namespace) -> int:
    from zoo.evaluation.plot import rd_plot
    from zoo.evaluation.runner import compressai_layout, evaluate_codec, list_images

    images, skipped = list_images(args.dataset)
    if not images:
        raise InputError(f"{args.dataset} has no images")
    if skipped and not args.quiet:
        print(f"zoo: note: skipped {skipped} non-image files in {args.dataset}", file=sys.stderr)
    series, outputs = {}, []
    cache_dir = Path(args.json).with_suffix(".cache") if args.json else None
    for model in args.model:
        points = []
        for q in parse_qualities(args.quality):
            loader = _Loader(model, q, args.metric, args.version, args.backend, args.arch)
            codec = loader()
            label = f"{codec.entry.arch}-{codec.entry.metric}"
            cache = None
            if cache_dir:
                cache_dir.mkdir(parents=True, exist_ok=True)
                cache = cache_dir / f"{Path(model).name}-q{codec.entry.quality}-{args.backend}.jsonl"
            summary = evaluate_codec(
                codec, args.dataset, label=label, cache=cache, workers=args.workers, loader=loader, quiet=args.quiet
            )
            p = summary.point
            points.append(p)
            if not args.quiet:
                print(
                    f"{codec.entry}: {p.images} images  bpp {p.bpp:.4f}  PSNR {p.psnr:.2f} dB  "
                    f"MS-SSIM {p.ms_ssim:.4f}  enc {p.encoding_time:.3f} s  dec {p.decoding_time:.3f} s"
                )
        series[label] = points
        outputs.append(compressai_layout(label, f"zoo eval on {args.dataset} ({args.backend})", points))
    if args.json:
        Path(args.json).write_text(json.dumps(outputs[0] if len(outputs) == 1 else outputs, indent=2) + "\n")
    if args.plot:
        rd_plot(series, args.plot, references=args.reference or ())
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from zoo.evaluation.plot import rd_plot
    from zoo.evaluation.runner import compressai_layout, evaluate_classical

    qualities = [q for q in parse_qualities(args.quality) if q is not None] or None
    cache_dir = Path(args.json).with_suffix(".cache") if args.json else None
    if cache_dir:
        cache_dir.mkdir(parents=True, exist_ok=True)
    summaries = evaluate_classical(args.codec, args.dataset, qualities, cache_dir=cache_dir, quiet=args.quiet)
    points = [s.point for s in summaries]
    if not args.quiet:
        for p in points:
            print(f"{args.codec} q{p.quality}: bpp {p.bpp:.4f}  PSNR {p.psnr:.2f} dB  MS-SSIM {p.ms_ssim:.4f}")
    if args.json:
        layout = compressai_layout(args.codec, f"Pillow {args.codec} on {args.dataset}", points)
        Path(args.json).write_text(json.dumps(layout, indent=2) + "\n")
    if args.plot:
        rd_plot({args.codec: points}, args.plot)
    return 0


def _curve(spec: str) -> tuple[list[float], list[float], list[float]]:
    """A results JSON (CompressAI layout) or the name of a reference curve."""
    from zoo.evaluation.plot import reference_curves

    path = Path(spec)
    if path.is_file():
        try:
            r = json.loads(path.read_text())["results"]
            return list(r["bpp"]), list(r["psnr-rgb"]), list(r.get("ms-ssim-rgb", []))
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError(f"{spec} is not a results JSON: {exc}") from None
    curves = reference_curves([spec])
    if spec not in curves:
        raise InputError(f"{spec} is neither a results file nor a reference curve (see zoo/data/SOURCES.md)")
    pts = curves[spec]
    return [p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts]


def cmd_bd(args: argparse.Namespace) -> int:
    from zoo.evaluation.bd import bd_psnr, bd_rate

    r1, d1, s1 = _curve(args.reference)
    r2, d2, s2 = _curve(args.test)
    if args.metric == "ms-ssim":
        d1, d2 = s1, s2
    rate = bd_rate(r1, d1, r2, d2)
    quality = bd_psnr(r1, d1, r2, d2)
    unit = "dB" if args.metric == "psnr" else ""
    print(f"BD-rate {rate:+.2f}%  BD-{args.metric.upper()} {quality:+.3f} {unit}".rstrip())
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("eval", help="rate-distortion of learned codecs on an image folder")
    p.add_argument("--model", nargs="+", required=True, help="registry names, entry folders or checkpoints")
    p.add_argument("--quality", help="N, N-M or N,M,... (default: the entry's own)")
    p.add_argument("--metric", default="mse", choices=["mse", "ms-ssim"])
    p.add_argument("--version")
    p.add_argument("--arch", help="architecture of a CompressAI checkpoint given as --model")
    p.add_argument("--dataset", required=True)
    p.add_argument("--backend", default="torch", choices=["torch", "onnx"])
    p.add_argument("--workers", type=int, default=1, help="parallel processes")
    p.add_argument("--json", help="write results (CompressAI layout); per-image results beside it resume runs")
    p.add_argument("--plot", help="write an RD plot (PNG)")
    p.add_argument(
        "--reference", nargs="*", help="published curves to draw, e.g. compressai-bmshj2018-hyperprior_mse_cuda"
    )
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = subparsers.add_parser("bench", help="classical codecs (Pillow) over a quality sweep")
    p.add_argument("--codec", required=True, choices=["jpeg", "webp", "avif", "jpeg2000"])
    p.add_argument("--dataset", required=True)
    p.add_argument("--quality", help="N, N-M or N,M,... (default: the codec's sweep)")
    p.add_argument("--json")
    p.add_argument("--plot")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_bench)

    p = subparsers.add_parser("bd", help="BD-rate and BD-PSNR of a test curve against a reference")
    p.add_argument("reference", help="results JSON or a reference curve name")
    p.add_argument("test", help="results JSON or a reference curve name")
    p.add_argument("--metric", default="psnr", choices=["psnr", "ms-ssim"])
    p.set_defaults(func=cmd_bd)
