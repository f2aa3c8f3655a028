"""`zoo compare`: one image at one byte budget, coded by zoo entries and by JPEG, WebP and AVIF, as a page."""

from __future__ import annotations

import argparse
import math
import sys
from types import SimpleNamespace

from zoo.errors import InputError
from zoo.points import METRICS


def default_models(metric: str) -> list[str]:
    """The variable-rate architectures `zoo.load` serves for `metric`: they take any level, so the search lands
    within a few percent of the budget, where a fixed-rate family can only step between released qualities."""
    from zoo.hub import served
    from zoo.registry import get_arch

    return [s.arch for s in served() if s.metric == metric and get_arch(s.arch).variable_rate]


def cmd_compare(args: argparse.Namespace) -> int:
    from zoo.cli.codec_cmds import EncodeOptions, _quality_ladder
    from zoo.evaluation.compare import CLASSICAL_DEFAULT, classical_at_size, eval_series, learned_at_size, write_page
    from zoo.imageio import read_image, to_uint8
    from zoo.ratecontrol import check_budget

    options = EncodeOptions(args.effort, args.seed, args.max_bytes, args.target_bpp)
    if not options.rate_controlled:
        raise InputError("zoo compare needs a budget: --max-bytes N or --target-bpp B")
    if options.max_bytes is not None:  # a bad budget fails before any model loads
        check_budget(options.max_bytes)
    rd = eval_series(args.eval) if args.eval else None  # a bad results file fails before any encoding
    models = args.models if args.models is not None else default_models(args.metric)
    classical = args.classical if args.classical is not None else list(CLASSICAL_DEFAULT)
    if not models and not classical:
        raise InputError("nothing to compare: give --models or --classical")
    ladders = []
    for model in models:  # every name is checked (and its weights fetched) before the first search
        ns = SimpleNamespace(
            model=model, metric=args.metric, version=None, device=args.device, backend="torch", source="zoo"
        )
        ladders.append(_quality_ladder(ns))  # type: ignore[arg-type]
    x, notices = read_image(args.image)
    for n in notices:
        print(f"zoo: note: {n}", file=sys.stderr)
    h, w = int(x.shape[-2]), int(x.shape[-1])
    budget = options.budget(h, w)
    reference = to_uint8(x)
    contenders = [
        learned_at_size(codec_at, space, x, budget, effort=args.effort, seed=args.seed) for codec_at, space in ladders
    ]
    contenders += [classical_at_size(name, reference, budget) for name in classical]
    if all(c.failure for c in contenders):
        raise InputError("no codec fits the budget: " + "; ".join(f"{c.name}: {c.failure}" for c in contenders))
    page, panels = write_page(args.out, args.image, reference, contenders, budget, rd)
    if not args.quiet:
        for p in panels:
            c = p.contender
            if c.failure:
                print(f"{c.name}: {c.failure}")
                continue
            ssim = "n/a" if math.isnan(p.ms_ssim) else f"{p.ms_ssim:.4f}"
            print(f"{c.name} {c.setting}: {p.bytes} bytes, {p.bpp:.4f} bpp, PSNR {p.psnr:.2f} dB, MS-SSIM {ssim}")
        print(f"wrote {page}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from zoo.cli.codec_cmds import add_encode_args

    p = subparsers.add_parser(
        "compare", help="one image at one byte budget by zoo entries, JPEG, WebP and AVIF: a static HTML page"
    )
    p.add_argument("image")
    p.add_argument("--out", required=True, help="folder for index.html, the coded files and their PNGs")
    p.add_argument(
        "--models",
        nargs="*",
        help="registry names or entry folders (default: the variable-rate architectures zoo.load serves)",
    )
    p.add_argument(
        "--classical",
        nargs="*",
        choices=["jpeg", "webp", "avif"],
        help="Pillow codecs to include (default: jpeg webp avif; none with an empty list)",
    )
    p.add_argument("--metric", default="mse", choices=METRICS, help="which entries of --models (registry names)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--eval", nargs="+", metavar="RESULTS", help="zoo eval/bench --json files: draw their RD curves")
    p.add_argument("--quiet", action="store_true")
    add_encode_args(p)
    p.set_defaults(func=cmd_compare)
