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
from typing import TYPE_CHECKING, Any, BinaryIO

from zoo.compressed import EntryId
from zoo.errors import InputError
from zoo.points import LEVEL_RANGE, METRICS

if TYPE_CHECKING:
    from torch import Tensor

    from zoo.codec import Codec
    from zoo.compressed import Compressed


def _refuse_same_file(source: str, output: str) -> None:
    """Refuse to write over the input (also through a link or another spelling of its path)."""
    try:
        same = os.path.samefile(source, output)
    except OSError:  # the output does not exist yet (or the input does not: reading it will say so)
        same = False
    if same:
        raise InputError(f"output {output} is the input {source}: writing it would destroy the input")


def _regular_input(path: str) -> None:
    """Refuse a directory, FIFO or device as an input before anything opens it (a FIFO would wait forever)."""
    from zoo.untrusted import check_regular

    try:
        check_regular(path, InputError)
    except FileNotFoundError:
        pass  # reading it says so


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
    from zoo.resolve import load

    if source == "compressai":
        import zoo

        if version is not None:
            raise InputError("--version does not apply to --source compressai (its weights have one version)")
        return zoo.load(model, quality=quality, metric=metric, device=device, backend=backend, source=source)
    return load(model, quality, metric, version, device=device, backend=backend)


def parse_quality(text: str) -> float:
    """--quality: an integer quality, or any level of a variable-rate entry (e.g. 3.5)."""
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


@dataclass(frozen=True)
class EncodeOptions:
    """How to encode, beyond which model: the encoder effort, its seed, and a size budget (bytes or bpp)."""

    effort: int = 0
    seed: int = 0
    max_bytes: int | None = None
    target_bpp: float | None = None

    @property
    def rate_controlled(self) -> bool:
        return self.max_bytes is not None or self.target_bpp is not None

    def budget(self, height: int, width: int) -> int:
        from zoo.ratecontrol import budget_for_bpp, check_budget

        if self.target_bpp is not None:
            return budget_for_bpp(self.target_bpp, height, width)
        return check_budget(self.max_bytes)


def add_effort_arg(p: argparse.ArgumentParser) -> None:
    from zoo.refine import EFFORTS

    p.add_argument(
        "--effort",
        type=int,
        default=0,
        choices=sorted(EFFORTS),
        help="encoder effort: 0 is the plain encoder; higher refines the latents for smaller files or better "
        "pixels at more CPU time (docs/effort.md); any decoder reads the result",
    )


def add_encode_args(p: argparse.ArgumentParser) -> None:
    """The encode options (`EncodeOptions`), parsed here for every command that encodes."""
    add_effort_arg(p)
    p.add_argument("--seed", type=int, default=0, help="seed of a refined encode (not needed to decode)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument(
        "--max-bytes", type=int, help="the largest quality whose file is at most this many bytes (no --quality)"
    )
    budget.add_argument(
        "--target-bpp", type=float, help="the largest quality whose file is at most this many bits per pixel"
    )


def encode_options(args: argparse.Namespace) -> EncodeOptions:
    options = EncodeOptions(args.effort, args.seed, args.max_bytes, args.target_bpp)
    if options.rate_controlled and args.quality is not None:
        raise InputError("--max-bytes and --target-bpp choose the quality themselves: leave out --quality")
    if options.max_bytes is not None and options.max_bytes < 1:
        raise InputError(f"--max-bytes must be a positive number of bytes, not {options.max_bytes}")
    return options


# Ladders already built in this process, by the options that name them: a folder under a size budget loads its
# entry once, not once an image.
_LADDERS: dict[tuple, tuple[Callable[[float], Codec], dict]] = {}


def _quality_ladder(args: argparse.Namespace) -> tuple[Callable[[float], Codec], dict]:
    """For rate control: the codec at each quality of --model, and the search space (a level range of a
    variable-rate entry, or the released qualities of a fixed-rate name)."""
    key = (args.model, args.metric, args.version, args.device, args.backend)
    if key not in _LADDERS:
        _LADDERS[key] = _build_ladder(args)
    return _LADDERS[key]


def _build_ladder(args: argparse.Namespace) -> tuple[Callable[[float], Codec], dict]:
    import zoo
    from zoo.registry import ARCHITECTURES, get_arch

    model, metric, version, device, backend = args.model, args.metric, args.version, args.device, args.backend
    if Path(model).is_dir():
        from zoo.entry import load_entry
        from zoo.entry_codec import codec_for_model

        net, info = load_entry(model, device)
        if info.variable_rate:
            levels = len(get_arch(info.entry.arch).qualities)
            return (lambda q: codec_for_model(net, info, backend, level=q, path=model)), {"low": 1.0, "high": levels}
        codec = codec_for_model(net, info, backend, path=model)
        return (lambda q: codec), {"choices": [codec.entry.quality]}
    if model not in ARCHITECTURES:
        raise InputError(f"--max-bytes and --target-bpp take a registry name or an entry folder, not {model!r}")
    spec = get_arch(model)
    loaded: dict[float, Codec] = {}

    def codec_at(q: float) -> Codec:
        if q not in loaded:
            loaded[q] = zoo.load(model, quality=q, metric=metric, version=version, device=device, backend=backend)
        return loaded[q]

    if spec.variable_rate:
        return codec_at, {"low": 1.0, "high": float(len(spec.qualities))}
    from zoo.errors import EntryNotFound
    from zoo.manifest import Manifest

    manifest, released = Manifest.read(), []
    for q in spec.qualities:
        try:
            manifest.resolve_point(model, q, metric, version)
        except EntryNotFound:  # not released at that quality: not a choice
            continue
        released.append(q)
    if not released:
        raise EntryNotFound(f"{model} has no released {metric} entry to choose a quality from")
    return codec_at, {"choices": released}


def encode_image(
    args: argparse.Namespace, options: EncodeOptions, image: str, codec: Codec | None = None
) -> tuple[Codec, Tensor, Compressed, list[str], float]:
    """Read `image` and encode it as `options` ask: (the codec used, the image, the file, notices, seconds
    spent encoding, every trial encode of a size search included). `codec`: the one --model names (loaded
    once for a folder); a size budget picks its own per image."""
    from zoo.imageio import read_image

    if not options.rate_controlled:
        codec = codec or encode_codec(args)
        assert codec is not None  # not rate-controlled: --model names one codec
        x, notices = read_image(image, max_pixels=codec.max_pixels)
        t0 = time.perf_counter()
        c = codec.compress(x, effort=options.effort, seed=options.seed)
        return codec, x, c, notices, time.perf_counter() - t0
    from zoo.ratecontrol import compress_to_size

    codec_at, space = _quality_ladder(args)
    x, notices = read_image(image)
    budget = options.budget(int(x.shape[-2]), int(x.shape[-1]))
    t0 = time.perf_counter()
    c, setting = compress_to_size(codec_at, x, budget, effort=options.effort, seed=options.seed, **space)
    return codec_at(setting), x, c, notices, time.perf_counter() - t0


def encode_codec(args: argparse.Namespace) -> Codec | None:
    """The codec `zoo encode` runs, from its options; None under a size budget, which picks one per image."""
    if encode_options(args).rate_controlled:
        return None
    return _resolve_codec(args.model, args.quality, args.metric, args.version, args.device, args.backend, args.source)


def encode_one(args: argparse.Namespace, codec: Codec | None, image: str, output: str) -> Coded:
    """Encode one image file with the encode options in `args`: the single-file command and every image of
    a folder (zoo.cli.folders) run exactly this."""
    from zoo import bitstream

    _refuse_same_file(image, output)
    used, x, compressed, notices, seconds = encode_image(args, encode_options(args), image, codec)
    for n in notices:
        if not args.quiet:
            print(f"zoo: note: {n}", file=sys.stderr)
    data = bitstream.dumps(compressed)
    _write_output(output, data)
    h, w = x.shape[-2:]
    return Coded(output, len(data), int(w), int(h), seconds, str(used.entry))


def cmd_encode(args: argparse.Namespace) -> int:
    from zoo.cli.folders import Coders, is_batch, run_batch

    if is_batch(args.image):
        return run_batch(args, "encode", Coders(encode_codec, encode_one, decode_one))
    _refuse_same_file(args.image, args.output)
    done = encode_one(args, encode_codec(args), args.image, args.output)
    if not args.quiet:
        print(
            f"{args.output}: {done.bytes} bytes, {done.bpp:.4f} bpp, {done.width}x{done.height}, "
            f"{done.made_by}, {done.seconds:.2f} s"
        )
    return 0


def decode_codec(args: argparse.Namespace, e: EntryId, fingerprint: bytes | None = None):
    """The codec that decodes a stream made by entry `e`: --model when given, else the entry its header names
    (its weights' fingerprint checked against the stream's before they are downloaded)."""
    from zoo.compressai import is_published_entry
    from zoo.compressai import load as load_published
    from zoo.resolve import load_released

    point = e.level if e.level is not None else e.quality
    if args.model:
        from zoo.registry import ARCHITECTURES

        local = args.model not in ARCHITECTURES and Path(args.model).is_dir()
        if args.source == "compressai" and not local:
            return load_published(args.model, point, e.metric, device=args.device, backend=args.backend)
        return _resolve_codec(args.model, e.level if local else point, e.metric, e.version, args.device, args.backend)
    if is_published_entry(e):  # CompressAI's published weights, found by name in their table
        return load_published(e.arch, e.quality, e.metric, device=args.device, backend=args.backend)
    # The header's strings name a released entry or nothing: they never become paths.
    return load_released(e, device=args.device, backend=args.backend, fingerprint=fingerprint)


def decode_one(args: argparse.Namespace, source: str, output: str, codecs: dict[EntryId, Any] | None = None) -> Coded:
    """Decode one zoo file to a PNG; `codecs` keeps the codecs already loaded, by the entry that made a stream."""
    from zoo import bitstream
    from zoo.imageio import write_png

    _refuse_same_file(source, output)
    _regular_input(source)
    data = bitstream.read_file(source)
    compressed = bitstream.loads(data)
    e = compressed.entry
    codecs = {} if codecs is None else codecs
    if e not in codecs:
        codecs[e] = decode_codec(args, e, compressed.fingerprint)
    codec = codecs[e]
    t0 = time.perf_counter()
    # 8 bits a sample from the start, and the PNG written straight to the file: memory is the decoder's, not
    # a float copy of the image (benchmarks/decode_limits.py measures the largest image the limits allow)
    image = codec.decompress_uint8(compressed)
    seconds = time.perf_counter() - t0
    _write_output(output, lambda f: write_png(image, f))
    return Coded(output, len(data), compressed.width, compressed.height, seconds, str(e))


def cmd_decode(args: argparse.Namespace) -> int:
    from zoo.cli.folders import Coders, is_batch, run_batch

    if is_batch(args.input):
        return run_batch(args, "decode", Coders(encode_codec, encode_one, decode_one))
    done = decode_one(args, args.input, args.output)
    if not args.quiet:
        print(f"{args.output}: {done.width}x{done.height} from {done.made_by}, {done.seconds:.2f} s")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from zoo import bitstream

    _regular_input(args.input)
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
    add_encode_args(p)
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
