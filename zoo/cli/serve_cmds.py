"""`zoo archive` and `zoo serve`: TorchServe model archives of zoo entries, and the server."""

from __future__ import annotations

import argparse
from pathlib import Path

from zoo.cli.codec_cmds import parse_quality
from zoo.points import LEVEL_RANGE, METRICS

STORE_HELP = "folder of .mar archives (default $ZOO_HOME/archives, ZOO_HOME defaulting to ~/.cache/zoo)"


def _entry_folder(name: str, quality: float | None, metric: str, version: str | None) -> tuple[Path, float | None]:
    """The entry folder a model argument names (resolved and downloaded like zoo.load does), with the level to
    serve where the entry is variable-rate."""
    from zoo.errors import InputError
    from zoo.resolve import resolve_model

    source = resolve_model(name, quality, metric, version)
    if source.kind == "checkpoint":
        raise InputError(f"{name} is a checkpoint: archive an entry (zoo import-compressai makes one)")
    return source.path, source.level if source.info.variable_rate else None


def cmd_archive(args: argparse.Namespace) -> int:
    from zoo.serve import build_archives

    folder, level = _entry_folder(args.model, args.quality, args.metric, args.version)
    paths = build_archives(
        folder,
        args.store,
        level=level,
        name=args.name,
        backend=args.backend,
        batch_size=args.batch_size,
        max_batch_delay_ms=args.max_batch_delay,
    )
    for p in paths:
        print(p)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from zoo.serve import default_state, start, stop

    state = Path(args.state) if args.state else default_state()
    if args.stop:
        print("stopped TorchServe" if stop(state) else "TorchServe was not running")
        return 0
    models = [m if m.endswith(".mar") else f"{m}.mar" for m in args.models] if args.models else None
    info = start(args.store, models, state_dir=state, auth=not args.no_auth)
    print(f"TorchServe (pid {info['pid']}) serving {', '.join(info['models'])}")
    print(f"inference {info['inference']}  management {info['management']}  metrics {info['metrics']}")
    if not args.no_auth:
        print(f"token authorization is on: keys in {state / 'key_file.json'}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("archive", help="build <name>-encode.mar and <name>-decode.mar for TorchServe")
    p.add_argument("model", help="registry name (with --quality) or entry folder")
    p.add_argument("--quality", type=parse_quality, help=f"quality; a level in {LEVEL_RANGE} for a variable-rate entry")
    p.add_argument("--metric", default="mse", choices=METRICS)
    p.add_argument("--version")
    p.add_argument(
        "--backend",
        default="torch",
        choices=["torch", "onnx"],
        help="onnx: export the transforms now and put the graphs in the archives (workers load, never export)",
    )
    p.add_argument("--name", help="archive base name (default: <arch>-q<Q>-<metric>-v<version>)")
    p.add_argument("--store", help=STORE_HELP)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-batch-delay", type=int, default=20, help="milliseconds")
    p.set_defaults(func=cmd_archive)

    p = subparsers.add_parser("serve", help="start (or --stop) TorchServe on 127.0.0.1 over the archives' folder")
    p.add_argument("--models", nargs="*", help="archive names (default: every .mar in the store)")
    p.add_argument("--store", help=STORE_HELP)
    p.add_argument("--state", help="folder for config, logs and pid (default $ZOO_HOME/torchserve)")
    p.add_argument("--no-auth", action="store_true", help="turn TorchServe's token authorization off")
    p.add_argument("--stop", action="store_true")
    p.set_defaults(func=cmd_serve)
