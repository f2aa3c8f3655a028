"""Folder mode of `zoo encode` and `zoo decode`: every image (or zoo file) below a folder or matching a glob.

Each file goes through the single-file path (`encode_one` / `decode_one`) with the command's options, in worker
processes that share nothing but the entry cache; an output newer than its input is skipped (a rerun resumes),
a file that fails is reported and the rest go on; a progress bar runs meanwhile and a summary ends it.
"""

from __future__ import annotations

import argparse
import copy
import glob
import json
import multiprocessing
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from zoo.errors import InputError

GLOB_CHARS = "*?["
SUFFIX = {"encode": ".zoo", "decode": ".png"}


def is_batch(source: str) -> bool:
    """A folder, or a glob pattern that is not itself the name of a file."""
    return Path(source).is_dir() or (any(c in source for c in GLOB_CHARS) and not Path(source).exists())


@dataclass(frozen=True)
class Job:
    source: str
    output: str


@dataclass
class Summary:
    mode: str
    found: int = 0
    coded: int = 0
    skipped: int = 0
    total_bytes: int = 0  # of the files coded: zoo files when encoding, the zoo files read when decoding
    megapixels: float = 0.0
    mean_bpp: float | None = None
    seconds: float = 0.0
    failures: list[dict[str, str]] = field(default_factory=list)


def _readable_images() -> set[str]:
    """File extensions of the formats Pillow can open."""
    from PIL import Image

    return {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


def _glob_base(pattern: str) -> Path:
    """The folder a glob's matches are placed relative to: its leading components without glob characters."""
    plain: list[str] = []
    for part in Path(pattern).parts:
        if any(c in part for c in GLOB_CHARS):
            break
        plain.append(part)
    return Path(*plain) if plain else Path(".")


def plan(source: str, out_dir: Path, mode: str) -> tuple[list[Job], list[dict[str, str]]]:
    """The jobs for a folder or glob, outputs mirroring the inputs' places below `out_dir`; two inputs that
    would write one output (a.png and a.jpg) are failures, not overwrites."""
    if Path(source).is_dir():
        base = Path(source)
        wanted = _readable_images() if mode == "encode" else {".zoo"}
        files = [
            p
            for p in sorted(base.rglob("*"))
            if p.is_file()
            and p.suffix.lower() in wanted
            and not any(part.startswith(".") for part in p.relative_to(base).parts)
        ]
    else:  # a glob picks its files itself
        base = _glob_base(source)
        files = sorted(Path(p) for p in glob.glob(source, recursive=True) if Path(p).is_file())
    out_resolved = out_dir.resolve()
    jobs: list[Job] = []
    failures: list[dict[str, str]] = []
    claimed: dict[Path, Path] = {}
    for path in files:
        if out_resolved in path.resolve().parents:
            continue  # an earlier run's outputs inside the input folder
        output = out_dir / path.relative_to(base).with_suffix(SUFFIX[mode])
        if output in claimed:
            failures.append({"path": str(path), "error": f"{claimed[output]} already writes {output}"})
            continue
        claimed[output] = path
        jobs.append(Job(str(path), str(output)))
    return jobs, failures


def _up_to_date(job: Job) -> bool:
    try:
        return Path(job.output).stat().st_mtime_ns > Path(job.source).stat().st_mtime_ns
    except OSError:
        return False


# One worker's state: the command's options, and the codecs it has loaded (encode: one; decode: one per entry).
_state: dict[str, Any] = {}


@dataclass(frozen=True)
class Coders:
    """The single-file path a batch runs (zoo.cli.codec_cmds passes its own functions: module-level, so a spawned
    worker receives them by name): the codec an encode loads once, encoding one file, decoding one file."""

    encode_codec: Callable[[argparse.Namespace], Any]
    encode_one: Callable[..., Any]
    decode_one: Callable[..., Any]


def _init(args: argparse.Namespace, mode: str, threads: int, coders: Coders) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)
    _state.update(args=args, mode=mode, codecs={}, coders=coders)


def _run(job: Job) -> tuple[Job, Any, str]:
    """Code one file; never raises (a worker that raised would stop the batch): returns the result or why not."""
    args, codecs, coders = _state["args"], _state["codecs"], _state["coders"]
    try:
        if _state["mode"] == "encode":
            if "encode" not in codecs:
                codecs["encode"] = coders.encode_codec(args)
            return job, coders.encode_one(args, codecs["encode"], job.source, job.output), ""
        return job, coders.decode_one(args, job.source, job.output, codecs), ""
    except Exception as exc:  # one bad file is reported and the batch goes on
        lines = str(exc).strip().splitlines()
        return job, None, lines[0] if lines else type(exc).__name__


def run_batch(args: argparse.Namespace, mode: str, coders: Coders) -> int:
    """Code every file of a folder or glob; prints a summary (or --json). Exit status 1 when any file failed."""
    from tqdm import tqdm

    source = args.image if mode == "encode" else args.input
    out_dir = Path(args.output)
    if args.workers < 1:
        raise InputError(f"--workers {args.workers}: give at least 1")
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir} is not a folder: with a folder or glob as input, the output is a folder")
    jobs, failures = plan(source, out_dir, mode)
    if not jobs and not failures:
        what = "images Pillow can open" if mode == "encode" else ".zoo files"
        raise InputError(f"no {what} in {source}")
    summary = Summary(mode, found=len(jobs) + len(failures), failures=failures)
    todo = [j for j in jobs if not _up_to_date(j)]
    summary.skipped = len(jobs) - len(todo)
    worker_args = copy.copy(args)
    worker_args.quiet = True  # notices of single files would break the bar; failures are reported below
    if mode == "encode" and todo:
        _init(worker_args, mode, 0, coders)  # a bad --model fails here, once; and the entry is cached for the workers
        _state["codecs"]["encode"] = coders.encode_codec(worker_args)
    for job in todo:
        Path(job.output).parent.mkdir(parents=True, exist_ok=True)
    bpps: list[float] = []
    t0 = time.perf_counter()
    bar = tqdm(total=len(todo), unit="img", desc=mode, disable=args.quiet or not todo, file=sys.stderr)

    def record(job: Job, done: Any, error: str) -> None:
        if done is None:
            summary.failures.append({"path": job.source, "error": error})
            bar.write(f"zoo: error: {_naming(job.source, error)}", file=sys.stderr)
        else:
            summary.coded += 1
            summary.total_bytes += done.bytes
            summary.megapixels += done.width * done.height / 1e6
            bpps.append(done.bpp)
        bar.set_postfix_str(f"{summary.megapixels:.1f} MP, {summary.total_bytes / 1e6:.2f} MB", refresh=False)
        bar.update(1)

    try:
        if args.workers == 1 or len(todo) <= 1:
            if mode == "decode":
                _init(worker_args, mode, 0, coders)
            for job in todo:
                record(*_run(job))
        else:
            import torch

            threads = max(1, torch.get_num_threads() // args.workers)
            # spawn, not fork: a forked copy of a process that has run torch can deadlock in its thread pools
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(args.workers, context, _init, (worker_args, mode, threads, coders)) as pool:
                pending = {pool.submit(_run, job): job for job in todo}
                try:
                    for future in as_completed(pending):
                        record(*future.result())
                        del pending[future]
                except BrokenProcessPool:  # a worker died (killed, out of memory): the others cannot go on
                    for job in pending.values():
                        record(job, None, "not coded: a worker process died")
    finally:
        bar.close()
    summary.seconds = round(time.perf_counter() - t0, 3)
    summary.mean_bpp = sum(bpps) / len(bpps) if bpps else None
    _report(summary, args)
    return 1 if summary.failures else 0


def _report(summary: Summary, args: argparse.Namespace) -> None:
    if args.json:
        print(json.dumps(asdict(summary), indent=2))
        return
    if args.quiet:
        return
    verb = "encoded" if summary.mode == "encode" else "decoded"
    bpp = f", mean {summary.mean_bpp:.4f} bpp" if summary.mean_bpp is not None else ""
    print(
        f"{verb} {summary.coded} of {summary.found} files ({summary.skipped} up to date, {len(summary.failures)} "
        f"failed): {summary.total_bytes} bytes, {summary.megapixels:.2f} MP{bpp}, {summary.seconds:.1f} s"
    )
    for failure in summary.failures:
        print(f"  failed: {_naming(failure['path'], failure['error'])}")


def _naming(path: str, error: str) -> str:
    """An error message that names the file (most already do)."""
    return error if path in error else f"{path}: {error}"
