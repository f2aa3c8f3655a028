"""`zoo list`, `zoo publish`, `zoo import-compressai`, `zoo hub serve|stop`: entries and the Hub."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from zoo.errors import InputError
from zoo.points import METRICS


def cmd_list(args: argparse.Namespace) -> int:
    from zoo.entry import version_key
    from zoo.hub import load_manifest

    entries = load_manifest()
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "arch": e.arch,
                        "quality": e.quality,
                        "metric": e.metric,
                        "version": e.version,
                        "repo": e.repo,
                        "revision": e.revision,
                        "kodak": e.kodak,
                        **({"levels": e.levels, "current_for": e.current_for} if e.levels else {}),
                    }
                    for e in entries
                ],
                indent=2,
            )
        )
        return 0
    if not entries:
        print("no released entries")
        return 0
    print(f"{'architecture':<22} {'q':>2} {'metric':<8} {'version':<8} {'bpp':>7} {'PSNR':>7} {'MS-SSIM':>8}  repo")
    nan = float("nan")
    for e in sorted(entries, key=lambda e: (e.arch, e.metric, e.quality, version_key(e.version))):
        if e.levels:  # a variable-rate entry: listed once, then one line per level
            current = f"; current for quality {_spans(e.current_for)}" if e.current_for else ""
            print(
                f"{e.arch:<22} {'*':>2} {e.metric:<8} {e.version:<8} {'every level in [1, 8]':>24}  "
                f"{e.repo}@{e.revision}{current}"
            )
            for level, k in sorted(e.levels.items(), key=lambda kv: float(kv[0])):
                print(
                    f"{'  level':<22} {level:>2} {'':<8} {'':<8} {k.get('bpp', nan):>7.4f} "
                    f"{k.get('psnr', nan):>7.2f} {k.get('ms_ssim', nan):>8.4f}"
                )
            continue
        k = e.kodak
        print(
            f"{e.arch:<22} {e.quality:>2} {e.metric:<8} {e.version:<8} {k.get('bpp', nan):>7.4f} "
            f"{k.get('psnr', nan):>7.2f} {k.get('ms_ssim', nan):>8.4f}  {e.repo}@{e.revision}"
        )
    return 0


def _spans(qs: list[int]) -> str:
    return f"{min(qs)}-{max(qs)}" if qs and sorted(qs) == list(range(min(qs), max(qs) + 1)) else ",".join(map(str, qs))


def cmd_publish(args: argparse.Namespace) -> int:
    from zoo.publish import publish_to_hub, publish_to_mirror

    if args.mirror:
        sha = publish_to_mirror(args.entry_dir, args.mirror, args.repo, args.version)
        where = f"mirror {args.mirror}"
    else:
        sha = publish_to_hub(args.entry_dir, args.repo, args.version)
        where = "the Hub"
    print(f"published {args.entry_dir} as {args.repo} v{args.version} to {where} (commit {sha[:12]})")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from zoo.entry import save_entry
    from zoo.registry import get_arch, model_from_state_dict, state_dict_from_checkpoint

    spec = get_arch(args.arch)
    state = state_dict_from_checkpoint(args.checkpoint)
    model = model_from_state_dict(args.arch, state)
    quality = args.quality or 0
    if quality:
        spec.check_quality(quality)
    if not model.has_tables:
        model.update(force=True)
    info = save_entry(
        model,
        args.out,
        arch=args.arch,
        quality=quality,
        metric=args.metric,
        version=args.version,
        lmbda=spec.lmbda(quality, args.metric) if quality else 0.0,
        training={"source": f"imported from CompressAI checkpoint {Path(args.checkpoint).name}"},
    )
    print(f"wrote {args.out}: {info.entry}, widths {info.widths}, fingerprint {info.fingerprint.hex()[:12]}")
    return 0


def cmd_hub(args: argparse.Namespace) -> int:
    from zoo.mirror import build_mirror, default_state, entries_folder, running_endpoint, start_server, stop_server

    state = Path(args.dir) if args.dir else default_state()
    if args.action == "stop" or args.stop:
        print("stopped the embedded Hub mirror" if stop_server(state) else "no embedded Hub mirror was running")
        return 0
    if args.action == "endpoint":
        endpoint = running_endpoint(state)
        print(endpoint or "")
        return 0 if endpoint else 1
    entries = entries_folder(args.entries)
    if not entries.is_dir():
        raise InputError(
            f"no entries folder at {entries}: run from a checkout's root or pass --entries DIR "
            "(a folder laid out like model_store/entries)"
        )
    built = build_mirror(state / "repos", entries_dir=entries)
    for exc in built.unavailable:  # a shallow clone or a copy without .git: the rest is still served
        print(f"zoo: warning: not served: {exc}", file=sys.stderr)
    pid, endpoint = start_server(state / "repos", state, port=args.port)
    if not args.quiet:
        retired = f" ({len(built.from_history)} retired, from git history)" if built.from_history else ""
        print(f"serving {len(built.published)} entries{retired} with olah (pid {pid}) at {endpoint}")
        print(f"export HF_ENDPOINT={endpoint}")
    else:
        print(endpoint)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("list", help="released entries with their Kodak figures")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)

    p = subparsers.add_parser("publish", help="push an entry folder to the Hub (or a local mirror) as a version")
    p.add_argument("entry_dir")
    p.add_argument("--repo", required=True, help="ORG/NAME")
    p.add_argument("--version", required=True)
    p.add_argument("--mirror", help="write a commit and tag into this mirror folder instead of the Hub")
    p.set_defaults(func=cmd_publish)

    p = subparsers.add_parser("import-compressai", help="turn a CompressAI checkpoint into an entry folder")
    p.add_argument("checkpoint")
    p.add_argument("--arch", required=True)
    p.add_argument("--quality", type=int)
    p.add_argument("--metric", default="mse", choices=METRICS)
    p.add_argument("--version", default="1.0")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_import)

    p = subparsers.add_parser("hub", help="the embedded Hub mirror (olah) over the released entries")
    p.add_argument("action", nargs="?", default="serve", choices=["serve", "stop", "endpoint"])
    p.add_argument("--port", type=int)
    p.add_argument("--dir", help="state folder (default $ZOO_HOME/hub-mirror, ZOO_HOME defaulting to ~/.cache/zoo)")
    p.add_argument(
        "--entries",
        help="folder of released entries, laid out like model_store/entries (default: model_store/entries in the "
        "current folder); the list of entries is the installed package's manifest",
    )
    p.add_argument("--stop", action="store_true", help="stop a running mirror")
    p.add_argument("--quiet", action="store_true", help="print only the endpoint")
    p.set_defaults(func=cmd_hub)
