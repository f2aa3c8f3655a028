"""`zoo encode`, `zoo decode`, `zoo info`: images to zoo files and back."""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from zoo.errors import InputError
from zoo.points import LEVEL_RANGE, METRICS


def _refuse_same_file(source: str, output: str) -> None:
    """Refuse to write over the input (also through a link or another spelling of its path)."""
    try:
        same = os.path.samefile(source, output)
    except OSError:  # the output does not exist yet (or the input does not: reading it will say so)
        same = False
    if same:
        raise InputError(f"output {output} is the input {source}: writing it would destroy the input")


def _write_output(path: str, data: bytes | Callable[[BinaryIO], None]) -> None:
    """Write `data` (bytes, or a function that writes to the open file) through a temporary file in the same
    folder and rename it into place, so a failure (disk full, interrupt) leaves the old file or none, never a
    partial one."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    created = False
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        created = True
        with os.fdopen(fd, "wb") as f:
            if isinstance(data, bytes):
                f.write(data)
            else:
                data(f)
        os.replace(tmp, target)
    except BaseException as exc:
        if created:
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None
        raise


def _resolve_codec(
    model: str, quality: float | None, metric: str, version: str | None, device: str, backend: str = "torch"
):
    from zoo.resolve import load

    return load(model, quality, metric, version, device=device, backend=backend)


def parse_quality(text: str) -> float:
    """--quality: an integer quality, or any level of a variable-rate entry (e.g. 3.5)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    return int(value) if value.is_integer() else value


def cmd_encode(args: argparse.Namespace) -> int:
    from zoo import bitstream
    from zoo.imageio import read_image

    _refuse_same_file(args.image, args.output)
    codec = _resolve_codec(args.model, args.quality, args.metric, args.version, args.device, args.backend)
    x, notices = read_image(args.image, max_pixels=codec.max_pixels)
    for n in notices:
        if not args.quiet:
            print(f"zoo: note: {n}", file=sys.stderr)
    t0 = time.perf_counter()
    data = bitstream.dumps(codec.compress(x))
    seconds = time.perf_counter() - t0
    _write_output(args.output, data)
    if not args.quiet:
        h, w = x.shape[-2:]
        print(
            f"{args.output}: {len(data)} bytes, {8 * len(data) / (h * w):.4f} bpp, {w}x{h}, "
            f"{codec.entry}, {seconds:.2f} s"
        )
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    from zoo import bitstream
    from zoo.imageio import write_png
    from zoo.resolve import load_released

    _refuse_same_file(args.input, args.output)
    data = bitstream.read_file(args.input)
    compressed = bitstream.loads(data)
    e = compressed.entry
    point = e.level if e.level is not None else e.quality
    if args.model:
        from zoo.registry import ARCHITECTURES

        local = args.model not in ARCHITECTURES and Path(args.model).is_dir()
        codec = _resolve_codec(args.model, e.level if local else point, e.metric, e.version, args.device, args.backend)
    else:
        # The header's strings name a released entry or nothing: they never become paths.
        codec = load_released(e, device=args.device, backend=args.backend)
    t0 = time.perf_counter()
    # 8 bits a sample from the start, and the PNG written straight to the file: memory is the decoder's, not
    # a float copy of the image (benchmarks/decode_limits.py measures the largest image the limits allow)
    image = codec.decompress_uint8(compressed)
    seconds = time.perf_counter() - t0
    _write_output(args.output, lambda f: write_png(image, f))
    if not args.quiet:
        print(f"{args.output}: {compressed.width}x{compressed.height} from {e}, {seconds:.2f} s")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from zoo import bitstream

    header = bitstream.peek_header(bitstream.read_file(args.input))
    info = header.as_dict()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    e = info["entry"]
    print(f"file:        {args.input} ({info['total_bytes']} bytes, {info['bpp']:.4f} bpp)")
    print(f"format:      zoo bitstream v{info['format_version']}")
    point = f"level {e['level']:g}" if "level" in e else f"quality {e['quality']}"
    print(f"entry:       {e['arch']} {point} {e['metric']} v{e['version']}")
    print(f"weights:     {info['fingerprint']}")
    print(f"image:       {info['width']}x{info['height']}, {info['channels']} channels, {info['bit_depth']} bits")
    print(f"tiles:       {info['tiles']}" + (f" of {info['tile_size']} px" if info["tile_size"] else ""))
    print("streams:     " + ", ".join(f"{k} {v} B" for k, v in info["streams"].items()))
    print(f"header:      {info['header_bytes']} bytes; index checksum {info['index_checksum']}")
    return 0


def _model_args(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--model", required=required, help="registry name (with --quality) or an entry folder")
    p.add_argument(
        "--quality",
        type=parse_quality,
        help=f"quality (1-8; 1-6 for cheng2020); a variable-rate entry takes any level in {LEVEL_RANGE}, e.g. 3.5",
    )
    p.add_argument("--metric", default="mse", choices=METRICS)
    p.add_argument("--version", help="entry version (default: the newest)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--backend", default="torch", choices=["torch", "onnx"])
    p.add_argument("--quiet", action="store_true", help="print nothing on success")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("encode", help="compress an image into a zoo file")
    p.add_argument("image")
    p.add_argument("output")
    _model_args(p, required=True)
    p.set_defaults(func=cmd_encode)

    p = subparsers.add_parser("decode", help="decompress a zoo file into a PNG (the entry comes from the header)")
    p.add_argument("input")
    p.add_argument("output")
    _model_args(p, required=False)
    p.set_defaults(func=cmd_decode)

    p = subparsers.add_parser("info", help="show what a zoo file holds, without decoding it")
    p.add_argument("input")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)
