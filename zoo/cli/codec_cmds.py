"""`zoo encode`, `zoo decode`, `zoo info`: images to zoo files and back."""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from zoo.compressed import EntryId
from zoo.errors import InputError


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
    model: str,
    quality: float | None,
    metric: str,
    version: str | None,
    device: str,
    backend: str = "torch",
    source: str = "zoo",
):
    import zoo

    if Path(model).is_dir():
        return zoo.load_local(model, device=device, backend=backend, quality=quality)
    if source == "compressai":
        if version is not None:
            raise InputError("--version does not apply to --source compressai (its weights have one version)")
        return zoo.load(model, quality=quality, metric=metric, device=device, backend=backend, source=source)
    return zoo.load(model, quality=quality, metric=metric, version=version, device=device, backend=backend)


def parse_quality(text: str) -> float:
    """--quality: an integer quality, or any level in [1, 8] of a variable-rate entry (e.g. 3.5)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    return int(value) if value.is_integer() else value


@dataclass(frozen=True)
class Coded:
    """What coding one file did: the file's size in bytes, the image's pixels, the coding time."""

    output: str
    bytes: int
    width: int
    height: int
    seconds: float
    made_by: str

    @property
    def bpp(self) -> float:
        return 8 * self.bytes / (self.width * self.height)


def encode_codec(args: argparse.Namespace):
    """The codec `zoo encode` runs, from its options."""
    return _resolve_codec(args.model, args.quality, args.metric, args.version, args.device, args.backend, args.source)


def encode_one(args: argparse.Namespace, codec, image: str, output: str) -> Coded:
    """Encode one image file with the encode options in `args`: the single-file command and every image of
    a folder (zoo.cli.folders) run exactly this."""
    from zoo import bitstream
    from zoo.imageio import read_image

    _refuse_same_file(image, output)
    x, notices = read_image(image, max_pixels=codec.max_pixels)
    for n in notices:
        if not args.quiet:
            print(f"zoo: note: {n}", file=sys.stderr)
    t0 = time.perf_counter()
    data = bitstream.dumps(codec.compress(x))
    seconds = time.perf_counter() - t0
    _write_output(output, data)
    h, w = x.shape[-2:]
    return Coded(output, len(data), int(w), int(h), seconds, str(codec.entry))


def cmd_encode(args: argparse.Namespace) -> int:
    from zoo.cli.folders import is_batch, run_batch

    if is_batch(args.image):
        return run_batch(args, "encode")
    _refuse_same_file(args.image, args.output)
    done = encode_one(args, encode_codec(args), args.image, args.output)
    if not args.quiet:
        print(
            f"{args.output}: {done.bytes} bytes, {done.bpp:.4f} bpp, {done.width}x{done.height}, "
            f"{done.made_by}, {done.seconds:.2f} s"
        )
    return 0


def decode_codec(args: argparse.Namespace, e: EntryId):
    """The codec that decodes a stream made by entry `e`: --model when given, else the entry its header names."""
    from zoo.compressai import is_published_entry
    from zoo.compressai import load as load_published
    from zoo.hub import load_released

    point = e.level if e.level is not None else e.quality
    if args.model:
        local = Path(args.model).is_dir()
        if args.source == "compressai" and not local:
            return load_published(args.model, point, e.metric, device=args.device, backend=args.backend)
        return _resolve_codec(args.model, e.level if local else point, e.metric, e.version, args.device, args.backend)
    if is_published_entry(e):  # CompressAI's published weights, found by name in their table
        return load_published(e.arch, e.quality, e.metric, device=args.device, backend=args.backend)
    # The header's strings name a released entry or nothing: they never become paths.
    return load_released(e, device=args.device, backend=args.backend)


def decode_one(args: argparse.Namespace, source: str, output: str, codecs: dict[EntryId, Any] | None = None) -> Coded:
    """Decode one zoo file to a PNG; `codecs` keeps the codecs already loaded, by the entry that made a stream."""
    from zoo import bitstream
    from zoo.imageio import write_png

    _refuse_same_file(source, output)
    data = bitstream.read_file(source)
    compressed = bitstream.loads(data)
    e = compressed.entry
    codecs = {} if codecs is None else codecs
    if e not in codecs:
        codecs[e] = decode_codec(args, e)
    codec = codecs[e]
    t0 = time.perf_counter()
    # 8 bits a sample from the start, and the PNG written straight to the file: memory is the decoder's, not
    # a float copy of the image (benchmarks/decode_limits.py measures the largest image the limits allow)
    image = codec.decompress_uint8(compressed)
    seconds = time.perf_counter() - t0
    _write_output(output, lambda f: write_png(image, f))
    return Coded(output, len(data), compressed.width, compressed.height, seconds, str(e))


def cmd_decode(args: argparse.Namespace) -> int:
    from zoo.cli.folders import is_batch, run_batch

    if is_batch(args.input):
        return run_batch(args, "decode")
    done = decode_one(args, args.input, args.output)
    if not args.quiet:
        print(f"{args.output}: {done.width}x{done.height} from {done.made_by}, {done.seconds:.2f} s")
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
        help="quality (1-8; 1-6 for cheng2020); a variable-rate entry takes any level in [1, 8], e.g. 3.5",
    )
    p.add_argument("--metric", default="mse", choices=["mse", "ms-ssim"])
    p.add_argument("--version", help="entry version (default: the newest)")
    p.add_argument(
        "--source",
        default="zoo",
        choices=["zoo", "compressai"],
        help="compressai: CompressAI's own published weights for --model/--quality (downloaded once, verified)",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--backend", default="torch", choices=["torch", "onnx"])
    p.add_argument("--quiet", action="store_true", help="print nothing on success")


def _batch_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, default=1, help="folders: processes coding images side by side")
    p.add_argument("--json", action="store_true", help="folders: print the summary as JSON")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("encode", help="compress an image (or a folder or glob of them) into zoo files")
    p.add_argument("image", help="an image, a folder (every image below it) or a quoted glob such as 'a/**/*.jpg'")
    p.add_argument("output", help="the zoo file, or for a folder or glob the output folder")
    _model_args(p, required=True)
    _batch_args(p)
    p.set_defaults(func=cmd_encode)

    p = subparsers.add_parser("decode", help="decompress a zoo file (or a folder or glob of them) into PNG")
    p.add_argument("input", help="a zoo file, a folder (every .zoo file below it) or a quoted glob")
    p.add_argument("output", help="the PNG, or for a folder or glob the output folder")
    _model_args(p, required=False)
    _batch_args(p)
    p.set_defaults(func=cmd_decode)

    p = subparsers.add_parser("info", help="show what a zoo file holds, without decoding it")
    p.add_argument("input")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)
