"""`zoo list`, `zoo publish`, `zoo import-compressai`, `zoo hub serve|stop`: entries and the Hub."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoo.errors import InputError
from zoo.points import METRICS

if TYPE_CHECKING:
    from zoo.hub import ManifestEntry, Resolved, Served


def cmd_list(args: argparse.Namespace) -> int:
    from zoo.hub import load_manifest, served
    from zoo.registry import get_arch

    entries = load_manifest()
    # --all says which names each version answers, under any architecture (a -vr entry serves its base's).
    points = served(None if args.all else args.arch, manifest=entries)
    points.sort(key=lambda s: (s.arch, s.metric, s.quality or 0))
    if args.all:
        rows = _all_rows(entries, points, get_arch(args.arch).name if args.arch else None)
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            _print_all(rows, args.arch)
        return 0
    rows = [_served_row(s) for s in points]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        _print_served(rows, args.arch)
    return 0


def _figures(point: Resolved) -> dict[str, float]:
    """Kodak figures of what a point runs: its entry's, or those of the level it runs a variable-rate one at."""
    if point.level is None:
        return dict(point.entry.kodak)
    for level, figures in point.entry.levels.items():
        if float(level) == point.level:
            return dict(figures)
    return {}


def _point_name(point: Resolved) -> str:
    return point.entry.name + (f" level {point.level:g}" if point.level is not None else "")


def _served_row(s: Served) -> dict[str, Any]:
    e = s.point.entry
    row: dict[str, Any] = {
        "arch": s.arch,
        "quality": s.quality,
        "metric": s.metric,
        "served_by": _point_name(s.point),
        "entry": e.name,
        "version": e.version,
        "level": s.point.level,
        "repo": e.repo,
        "revision": e.revision,
        "from_history": bool(e.commit),
    }
    if s.quality is None:  # a variable-rate architecture: every level of its entry
        row["levels"] = e.levels
    else:
        row["kodak"] = _figures(s.point)
    return row


def _all_rows(entries: list[ManifestEntry], points: list[Served], arch: str | None) -> list[dict[str, Any]]:
    """Every released version: what it serves today, or (retired) what `zoo.load` gives for its name instead."""
    from zoo.entry import version_key
    from zoo.registry import get_arch

    answers = {(s.arch, s.quality, s.metric): s.point for s in points}
    rows = []
    for e in sorted(entries, key=lambda e: (e.arch, e.metric, e.quality, version_key(e.version))):
        if arch is not None and e.arch != arch:
            continue
        serves = [s for s in points if s.point.entry == e]
        own = answers.get((e.arch, None if get_arch(e.arch).variable_rate else e.quality, e.metric))
        row: dict[str, Any] = {
            "arch": e.arch,
            "quality": e.quality,
            "metric": e.metric,
            "version": e.version,
            "entry": e.name,
            "repo": e.repo,
            "revision": e.revision,
            "kodak": e.kodak,
            **({"levels": e.levels, "current_for": e.current_for} if e.levels else {}),
            "retired": not serves,
            "serves": _serves(serves),
            "replaced_by": _point_name(own) if own is not None and not serves else None,
            "from_history": bool(e.commit),
        }
        rows.append(row)
    return rows


def _serves(points: list[Served]) -> list[str]:
    """The names an entry answers, one per architecture: "bmshj2018-hyperprior q1-8", "bmshj2018-hyperprior-vr"."""
    groups: dict[str, list[int]] = {}
    for s in points:
        groups.setdefault(s.arch, []).extend([] if s.quality is None else [s.quality])
    return [f"{a} q{_spans(qs)}" if qs else f"{a} (every level)" for a, qs in sorted(groups.items())]


def _spans(qs: list[int]) -> str:
    """1-8 for a run of qualities, else 1,3,5."""
    low, high = min(qs), max(qs)
    if low == high:
        return str(low)
    return f"{low}-{high}" if sorted(qs) == list(range(low, high + 1)) else ",".join(map(str, sorted(qs)))


_HEAD = f"{'architecture':<24} {'q':>2} {'metric':<8}"


def _figure_columns(k: dict[str, float]) -> str:
    nan = float("nan")
    return f"{k.get('bpp', nan):>7.4f} {k.get('psnr', nan):>7.2f} {k.get('ms_ssim', nan):>8.4f}"


def _print_served(rows: list[dict[str, Any]], arch: str | None) -> None:
    if not rows:
        print(f"no released entries{' for ' + arch if arch else ''}")
        return
    print(f"{_HEAD} {'bpp':>7} {'PSNR':>7} {'MS-SSIM':>8}  served by")
    for r in rows:
        history = " (from git history)" if r["from_history"] else ""
        if r["quality"] is None:
            print(f"{r['arch']:<24} {'*':>2} {r['metric']:<8} {'every level in [1, 8]':>24}  {r['served_by']}{history}")
            for level, k in sorted(r["levels"].items(), key=lambda kv: float(kv[0])):
                print(f"{'  level':<24} {level:>2} {'':<8} {_figure_columns(k)}")
            continue
        figures = _figure_columns(r["kodak"])
        print(f"{r['arch']:<24} {r['quality']:>2} {r['metric']:<8} {figures}  {r['served_by']}{history}")


def _print_all(rows: list[dict[str, Any]], arch: str | None) -> None:
    if not rows:
        print(f"no released entries{' for ' + arch if arch else ''}")
        return
    print(f"{_HEAD} {'version':<8} {'bpp':>7} {'PSNR':>7} {'MS-SSIM':>8}  status")
    for r in rows:
        if r["retired"]:
            status = f"retired, replaced by {r['replaced_by']}" if r["replaced_by"] else "retired"
        else:
            status = "serves " + ", ".join(r["serves"])
        status += "; files from git history" if r["from_history"] else ""
        if "levels" in r:
            figures = f"{'every level in [1, 8]':>24}"
            q = "*"
        else:
            figures, q = _figure_columns(r["kodak"]), str(r["quality"])
        print(f"{r['arch']:<24} {q:>2} {r['metric']:<8} {r['version']:<8} {figures}  {status}")


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
    """A CompressAI checkpoint becomes an entry: a file on disk (with --arch), or by name one of CompressAI's
    published checkpoints, downloaded, verified and cached (then copied to --out, or published)."""
    import shutil
    import tempfile

    from zoo.compressai import entry_folder, import_checkpoint
    from zoo.entry import read_config
    from zoo.registry import ARCHITECTURES

    if args.mirror and not args.publish:
        raise InputError("--mirror goes with --publish ORG")
    by_name = args.checkpoint in ARCHITECTURES and not Path(args.checkpoint).exists()
    with tempfile.TemporaryDirectory(prefix="zoo-import-") as scratch:
        if by_name:
            if args.arch and args.arch != args.checkpoint:
                raise InputError(f"--arch {args.arch} contradicts the name {args.checkpoint}")
            folder = entry_folder(args.checkpoint, args.quality, args.metric)
            info = read_config(folder)
            if args.out:
                _refuse_non_empty(args.out)
                shutil.copytree(folder, args.out, dirs_exist_ok=True)
                folder = Path(args.out)
        else:
            if not args.arch:
                raise InputError(
                    f"{args.checkpoint} is not an architecture name: importing a checkpoint file needs --arch"
                )
            if not (args.out or args.publish):
                raise InputError("importing a checkpoint file needs --out DIR or --publish ORG")
            folder = Path(args.out) if args.out else Path(scratch) / "entry"
            info = import_checkpoint(
                args.checkpoint, args.arch, folder, quality=args.quality or 0, metric=args.metric, version=args.version
            )
        e = info.entry
        print(f"{folder}: {e}, widths {info.widths}, fingerprint {info.fingerprint.hex()[:12]}")
        if args.publish:
            from zoo.publish import publish_to_hub, publish_to_mirror

            repo = f"{args.publish}/{e.arch}-q{e.quality}-{e.metric}"
            if args.mirror:
                sha = publish_to_mirror(folder, args.mirror, repo, e.version)
            else:
                sha = publish_to_hub(folder, repo, e.version)
            print(f"published {e} as {repo} v{e.version} (commit {sha[:12]})")
    return 0


def _refuse_non_empty(folder: str) -> None:
    out = Path(folder)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"--out {folder} exists and is not an empty folder")


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
    p = subparsers.add_parser(
        "list", help="what zoo.load serves for each architecture and quality, with its Kodak figures"
    )
    p.add_argument("arch", nargs="?", metavar="ARCH", help="only this architecture")
    p.add_argument("--all", action="store_true", help="every version ever released, retired ones marked")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)

    p = subparsers.add_parser("publish", help="push an entry folder to the Hub (or a local mirror) as a version")
    p.add_argument("entry_dir")
    p.add_argument("--repo", required=True, help="ORG/NAME")
    p.add_argument("--version", required=True)
    p.add_argument("--mirror", help="write a commit and tag into this mirror folder instead of the Hub")
    p.set_defaults(func=cmd_publish)

    p = subparsers.add_parser(
        "import-compressai",
        help="CompressAI's published weights by name (e.g. bmshj2018-hyperprior --quality 3), or a checkpoint file "
        "(with --arch), as an entry",
    )
    p.add_argument("checkpoint", help="an architecture CompressAI publishes weights for, or a checkpoint file")
    p.add_argument("--arch", help="the architecture of a checkpoint file")
    p.add_argument("--quality", type=int)
    p.add_argument("--metric", default="mse", choices=METRICS)
    p.add_argument("--version", default="1.0", help="entry version of a checkpoint file's entry")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--out", help="write the entry folder here (a name is cached under $ZOO_HOME/compressai anyway)")
    where.add_argument("--publish", metavar="ORG", help="push the entry to the Hub as ORG/ARCH-qQ-METRIC")
    p.add_argument("--mirror", help="with --publish: commit into this local mirror folder instead of the Hub")
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
