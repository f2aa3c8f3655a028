"""`zoo eval`, `zoo bench`, `zoo bd`: rate–distortion figures of learned and classical codecs."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from zoo.errors import InputError
from zoo.points import METRICS


def parse_qualities(text: str | None) -> list[float | None]:
    """ "3", "1-8", "1,3,5" or, for variable-rate entries, "1,2.5,3.25" -> list of numbers (in order, once
    each; integral ones as ints); None -> [None] (the entry decides)."""
    if not text:
        return [None]
    out: list[float | None] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            if hi:
                span: list[float] = list(range(int(lo), int(hi) + 1))
                if not span:
                    raise ValueError
            else:
                value = float(lo)
                if value != value or value in (float("inf"), float("-inf")):
                    raise ValueError
                span = [int(value) if value.is_integer() else value]
            out += [q for q in span if q not in out]
    except ValueError:
        raise InputError(f"--quality takes N, N-M (N <= M) or N,M,... (levels like 2.5 too); got {text!r}") from None
    return out


def _is_single_entry(model: str) -> bool:
    """Anything but a registry name (an entry folder, a checkpoint file, a Hub repo): one model, so one quality.
    The same rule as the resolver's (`zoo.resolve`): a registry name is never taken for a folder."""
    from zoo.registry import ARCHITECTURES

    return model not in ARCHITECTURES


def released_qualities(
    arch: str, qualities: list[float | None], metric: str, version: str | None
) -> tuple[list[float], list[float]]:
    """(released, missing) among the requested qualities of a registry architecture, from the manifest.

    Unknown architectures and qualities the architecture does not have are errors; a quality with no
    released entry is only missing. None of them released is an error that says what is."""
    from zoo.errors import EntryNotFound
    from zoo.manifest import Manifest
    from zoo.registry import get_arch

    spec = get_arch(arch)
    if qualities == [None]:
        if spec.variable_rate:
            qualities = list(spec.qualities)
        else:
            raise InputError(f"{arch} needs --quality: {', '.join(map(str, spec.qualities))}")
    manifest = Manifest.read()
    released: list[float] = []
    missing: list[float] = []
    first_error: EntryNotFound | None = None
    for q in qualities:
        assert q is not None
        if spec.variable_rate:
            spec.check_level(q)
        else:
            spec.check_quality(q)
        try:
            manifest.resolve_point(arch, q, metric, version)
        except EntryNotFound as exc:
            missing.append(q)
            first_error = first_error or exc
            continue
        released.append(q)
    if not released:
        assert first_error is not None
        if len(qualities) == 1:
            raise first_error
        from zoo.entry import version_key

        have = sorted(
            {(e.quality, e.metric, e.version) for e in manifest.select(arch)},
            key=lambda t: (t[0], t[1], version_key(t[2])),
        )
        listed = ", ".join(f"q{q}-{m}@{v}" for q, m, v in have) or "none yet"
        wanted = f"{metric}" + (f" version {version}" if version else "")
        raise EntryNotFound(f"{arch} has no released {wanted} entry at any requested quality; released: {listed}")
    return released, missing


def _spans(qs: list[float]) -> str:
    """[1, 2, 3, 5] -> "q1-3, q5"; [2.5] -> "q2.5"."""
    groups: list[list[float]] = []
    for q in sorted(qs):
        if groups and float(q).is_integer() and q == groups[-1][-1] + 1:
            groups[-1].append(q)
        else:
            groups.append([q])
    return ", ".join(f"q{g[0]}" + (f"-{g[-1]}" if len(g) > 1 else "") for g in groups)


class _Loader:
    """Picklable recipe for a codec, so worker processes can load their own copy."""

    def __init__(
        self, model: str, quality: float | None, metric: str, version: str | None, backend: str, arch: str | None
    ):
        self.args = (model, quality, metric, version, backend, arch)

    def __call__(self):
        from zoo.resolve import load

        model, quality, metric, version, backend, arch = self.args
        return load(model, quality, metric, version, backend=backend, arch=arch)


def _plan(model: str, args: argparse.Namespace) -> list[tuple[_Loader, Any]]:
    """What to evaluate for one --model: (loader, codec or None to load when its turn comes) per quality."""

    requested = parse_qualities(args.quality)
    if not _is_single_entry(model):
        released, missing = released_qualities(model, requested, args.metric, args.version)
        if missing:
            print(
                f"zoo: warning: {model} has no released {args.metric} entry at {_spans(missing)}; "
                f"evaluating {_spans(released)}",
                file=sys.stderr,
            )
        return [(_Loader(model, q, args.metric, args.version, args.backend, args.arch), None) for q in released]
    if Path(model).is_file():
        # A checkpoint does not know its quality: --quality only labels it, so it takes one number.
        if len(requested) > 1:
            raise InputError(f"{model} is one checkpoint: --quality takes a single N to label it, not {args.quality}")
        return [(_Loader(model, requested[0], args.metric, args.version, args.backend, args.arch), None)]
    if Path(model).is_dir():
        from zoo.entry import read_config

        if read_config(model).variable_rate:  # one entry, every level: evaluate those asked for (all by default)
            from zoo.registry import get_arch

            spec = get_arch(read_config(model).entry.arch)
            levels = [spec.check_level(q) for q in requested if q is not None] or list(spec.qualities)
            return [(_Loader(model, q, args.metric, args.version, args.backend, args.arch), None) for q in levels]
    loader = _Loader(model, None, args.metric, args.version, args.backend, args.arch)
    codec = loader()
    q = codec.entry.quality
    if requested != [None] and q not in requested:
        raise InputError(f"{model} is {codec.entry}, quality {q}; --quality {args.quality} does not include it")
    if len(requested) > 1 and not args.quiet:
        print(f"zoo: note: {model} is one entry ({codec.entry}); evaluating q{q} only", file=sys.stderr)
    return [(loader, codec)]


def _labels(runs: list[tuple[str, list[Any]]]) -> list[str]:
    """A distinct series label per --model: "arch-metric@version" (versions joined with "+" when a sweep
    mixes them), then the --model text, then a counter, where that is still not unique."""
    labels: list[str] = []
    for model, codecs in runs:
        versions = list(dict.fromkeys(c.entry.version for c in codecs))
        e = codecs[0].entry
        label = f"{e.arch}-{e.metric}@{'+'.join(versions)}"
        if label in labels:
            label = f"{label} ({model})"
        n = 2
        base = label
        while label in labels:
            label, n = f"{base} #{n}", n + 1
        labels.append(label)
    return labels


def _print_table(summary: Any) -> None:
    print(f"  {'image':<24} {'size':>9} {'bytes':>8} {'bpp':>7} {'PSNR':>6} {'MS-SSIM':>7} {'enc s':>6} {'dec s':>6}")
    for r in summary.per_image:
        print(
            f"  {r.image:<24} {f'{r.width}x{r.height}':>9} {r.num_bytes:>8} {r.bpp:>7.4f} {r.psnr:>6.2f} "
            f"{r.ms_ssim:>7.4f} {r.encoding_time:>6.3f} {r.decoding_time:>6.3f}"
        )


def cmd_eval(args: argparse.Namespace) -> int:
    from zoo.evaluation.plot import rd_plot
    from zoo.evaluation.runner import cache_name, compressai_layout, evaluate_codec, list_images, per_image_record

    images, skipped = list_images(args.dataset)
    if not images:
        raise InputError(f"{args.dataset} has no images")
    if skipped and not args.quiet:
        print(f"zoo: note: skipped {skipped} non-image files in {args.dataset}", file=sys.stderr)
    # Plan every model first, so a bad name or quality fails before any long run.
    plans = [(model, _plan(model, args)) for model in args.model]
    cache_dir = Path(args.json).with_suffix(".cache") if args.json else None
    unreadable: set[str] = set()
    runs: list[tuple[str, list[Any]]] = []
    summaries: list[list[Any]] = []
    for model, plan in plans:
        codecs, done = [], []
        for loader, codec in plan:
            codec = codec or loader()
            cache = None
            if cache_dir:
                cache_dir.mkdir(parents=True, exist_ok=True)
                cache = cache_dir / cache_name(codec, args.backend, args.effort)
            summary = evaluate_codec(
                codec,
                args.dataset,
                cache=cache,
                workers=args.workers,
                loader=loader,
                quiet=args.quiet,
                effort=args.effort,
            )
            new = [s for s in summary.skipped if s.image not in unreadable]
            unreadable.update(s.image for s in new)
            if new and not args.quiet:
                print(
                    f"zoo: note: skipped {len(new)} unreadable image files in {args.dataset} (first: {new[0].reason})",
                    file=sys.stderr,
                )
            p = summary.point
            if not args.quiet:
                _print_table(summary)
                print(
                    f"{codec.entry}: {p.images} images  bpp {p.bpp:.4f}  PSNR {p.psnr:.2f} dB  "
                    f"MS-SSIM {p.ms_ssim:.4f}  enc {p.encoding_time:.3f} s  dec {p.decoding_time:.3f} s"
                )
            codecs.append(codec)
            done.append(summary)
        runs.append((model, codecs))
        summaries.append(done)
    series, outputs = {}, []
    for label, (_, codecs), done in zip(_labels(runs), runs, summaries, strict=True):
        label = f"{label} effort {args.effort}" if args.effort else label
        points = [replace(s.point, label=label) for s in done]
        series[label] = points
        per_image = [
            per_image_record(s, entry=str(c.entry), fingerprint=c.fingerprint.hex())
            for s, c in zip(done, codecs, strict=True)
        ]
        outputs.append(
            compressai_layout(label, f"zoo eval on {args.dataset} ({args.backend})", points, per_image=per_image)
        )
    if args.json:
        Path(args.json).write_text(json.dumps(outputs[0] if len(outputs) == 1 else outputs, indent=2) + "\n")
    if args.plot:
        rd_plot(series, args.plot, references=args.reference or (), metric=args.plot_metric)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from zoo.evaluation.plot import rd_plot
    from zoo.evaluation.runner import compressai_layout, evaluate_classical, per_image_record

    wanted = [q for q in parse_qualities(args.quality) if q is not None]
    if any(not float(q).is_integer() for q in wanted):
        raise InputError(f"classical codecs take integer qualities, not {args.quality!r}")
    qualities = [int(q) for q in wanted] or None
    cache_dir = Path(args.json).with_suffix(".cache") if args.json else None
    if cache_dir:
        cache_dir.mkdir(parents=True, exist_ok=True)
    summaries = evaluate_classical(args.codec, args.dataset, qualities, cache_dir=cache_dir, quiet=args.quiet)
    points = [s.point for s in summaries]
    if not args.quiet:
        for p in points:
            print(f"{args.codec} q{p.quality}: bpp {p.bpp:.4f}  PSNR {p.psnr:.2f} dB  MS-SSIM {p.ms_ssim:.4f}")
    if args.json:
        per_image = [per_image_record(s) for s in summaries]
        layout = compressai_layout(args.codec, f"Pillow {args.codec} on {args.dataset}", points, per_image=per_image)
        Path(args.json).write_text(json.dumps(layout, indent=2) + "\n")
    if args.plot:
        rd_plot({args.codec: points}, args.plot, metric=args.plot_metric)
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
    p.add_argument("--metric", default="mse", choices=METRICS)
    p.add_argument("--version")
    p.add_argument("--arch", help="architecture of a CompressAI checkpoint given as --model")
    p.add_argument("--dataset", required=True)
    p.add_argument("--backend", default="torch", choices=["torch", "onnx"])
    p.add_argument("--workers", type=int, default=1, help="parallel processes")
    from zoo.cli.codec_cmds import add_effort_arg

    add_effort_arg(p)
    p.add_argument("--json", help="write results (CompressAI layout); per-image results beside it resume runs")
    p.add_argument("--plot", help="write an RD plot (PNG)")
    p.add_argument("--plot-metric", default="psnr", choices=["psnr", "ms-ssim"], help="the plot's quality axis")
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
    p.add_argument("--plot-metric", default="psnr", choices=["psnr", "ms-ssim"], help="the plot's quality axis")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_bench)

    p = subparsers.add_parser("bd", help="BD-rate and BD-PSNR of a test curve against a reference")
    p.add_argument("reference", help="results JSON or a reference curve name")
    p.add_argument("test", help="results JSON or a reference curve name")
    p.add_argument("--metric", default="psnr", choices=["psnr", "ms-ssim"])
    p.set_defaults(func=cmd_bd)
