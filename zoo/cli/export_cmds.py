"""`zoo export`: the transforms as ONNX and/or TorchScript graphs with a metadata.json."""

from __future__ import annotations

import argparse

from zoo.cli.codec_cmds import parse_quality
from zoo.points import LEVEL_RANGE, METRICS


def cmd_export(args: argparse.Namespace) -> int:
    from zoo.export import entry_metadata, export_graphs
    from zoo.resolve import load

    codec = load(args.model, args.quality, args.metric, args.version, arch=args.arch)
    formats = ("onnx", "torchscript") if args.format == "both" else (args.format,)
    written = export_graphs(
        codec.model,
        args.out,
        formats,
        metadata={
            **entry_metadata(codec.entry, codec.fingerprint),
            "torchscript_note": "TorchScript is deprecated upstream; torch.export / ONNX are the forward path",
        },
    )
    print(f"exported {codec.entry} to {args.out}: {', '.join(sorted(written))}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", help="export the transforms to ONNX / TorchScript")
    p.add_argument("model", help="registry name (with --quality), entry folder, or CompressAI checkpoint (--arch)")
    p.add_argument("--quality", type=parse_quality, help=f"quality; a level in {LEVEL_RANGE} for a variable-rate entry")
    p.add_argument("--metric", default="mse", choices=METRICS)
    p.add_argument("--version")
    p.add_argument("--arch", help="architecture of a CompressAI checkpoint")
    p.add_argument("--format", default="onnx", choices=["onnx", "torchscript", "both"])
    p.add_argument("--out", default="export", help="output folder (default: export/ in the current folder)")
    p.set_defaults(func=cmd_export)
