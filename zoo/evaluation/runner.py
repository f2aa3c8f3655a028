"""Rate–distortion runs over an image folder: real files (bpp from their size, header included), PSNR and
MS-SSIM on the 8-bit reconstruction, encode/decode seconds; parallel, resumable, with a progress bar.
Files that cannot be read as images are skipped and reported, never fatal.

Results are written in CompressAI's layout ({"name", "description", "results": {"bpp": [...], ...}}, one
value per quality) so our curves compare directly with published ones.
"""

from __future__ import annotations

import functools
import json
import math
import re
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zoo.compressed import format_level
from zoo.errors import InputError
from zoo.evaluation.metrics import bpp, ms_ssim_rgb, psnr_rgb

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".ppm", ".pgm"}


@dataclass(frozen=True)
class ImageResult:
    image: str
    width: int
    height: int
    num_bytes: int
    bpp: float
    psnr: float
    ms_ssim: float
    encoding_time: float
    decoding_time: float


@dataclass(frozen=True)
class SkippedImage:
    """A file with an image extension that could not be read or coded as an image."""

    image: str
    reason: str


@dataclass(frozen=True)
class RDPoint:
    """Mean figures of one codec setting over a dataset."""

    label: str
    quality: float  # an integer quality, or the level of a variable-rate entry
    bpp: float
    psnr: float
    ms_ssim: float
    encoding_time: float
    decoding_time: float
    images: int


def list_images(folder: str | Path) -> tuple[list[Path], int]:
    """Image files of a folder, sorted, and how many other files were skipped."""
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"{folder} is not a folder")
    files = sorted(p for p in root.iterdir() if p.is_file())
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    return images, len(files) - len(images)


def _rgb8(path: Path) -> np.ndarray:
    from zoo.imageio import read_image, to_uint8

    x, _ = read_image(path)
    return to_uint8(x)


# -- one image, one setting ----------------------------------------------------------------------

_WORKER: dict[str, Any] = {}


def _learned_one(codec, path: Path, effort: int = 0) -> ImageResult:
    import torch

    from zoo import bitstream

    ref = _rgb8(path)
    x = torch.from_numpy(ref.copy()).permute(2, 0, 1).float() / 255.0
    t0 = time.perf_counter()
    data = bitstream.dumps(codec.compress(x, effort=effort) if effort else codec.compress(x))
    t1 = time.perf_counter()
    out = codec.decompress_uint8(bitstream.loads(data))
    t2 = time.perf_counter()
    h, w = ref.shape[:2]
    return ImageResult(
        path.name, w, h, len(data), bpp(len(data), h, w), psnr_rgb(ref, out), ms_ssim_rgb(ref, out), t1 - t0, t2 - t1
    )


def _classical_one(codec, quality: int, path: Path) -> ImageResult:
    ref = _rgb8(path)
    t0 = time.perf_counter()
    data = codec.encode(ref, quality)
    t1 = time.perf_counter()
    out = codec.decode(data)
    t2 = time.perf_counter()
    h, w = ref.shape[:2]
    return ImageResult(
        path.name, w, h, len(data), bpp(len(data), h, w), psnr_rgb(ref, out), ms_ssim_rgb(ref, out), t1 - t0, t2 - t1
    )


def _guarded(one: Callable[[Path], ImageResult], path: Path) -> ImageResult | SkippedImage:
    # InputError is what image reading raises for a corrupt or foreign file (and the codec for an
    # image it cannot take); anything else is a bug and must still surface.
    try:
        return one(path)
    except InputError as exc:
        return SkippedImage(path.name, str(exc))


def _init_worker(loader: Callable[[], Any], threads: int, effort: int = 0) -> None:
    import torch

    torch.set_num_threads(threads)
    _WORKER["codec"] = loader()
    _WORKER["effort"] = effort


def _worker_learned(path: Path) -> ImageResult | SkippedImage:
    return _guarded(functools.partial(_learned_one, _WORKER["codec"], effort=_WORKER.get("effort", 0)), path)


# -- runs ----------------------------------------------------------------------------------------


def _cache_load(cache: Path | None) -> dict[str, ImageResult]:
    done: dict[str, ImageResult] = {}
    if cache and cache.exists():
        for line in cache.read_text().splitlines():
            try:
                r = ImageResult(**json.loads(line))
            except (ValueError, TypeError):
                continue  # a line cut off by an interrupted run
            done[r.image] = r
    return done


def _progress(total: int, desc: str, quiet: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=quiet, leave=False)


def run_images(
    images: list[Path],
    one: Callable[[Path], ImageResult] | None,
    *,
    desc: str,
    cache: Path | None = None,
    workers: int = 1,
    loader: Callable[[], Any] | None = None,
    quiet: bool = False,
    effort: int = 0,
) -> tuple[list[ImageResult], list[SkippedImage]]:
    """Evaluate each image once; results already in `cache` (a JSONL file) are kept, new ones appended.
    `effort`: the encoder effort worker processes use (`one` carries its own).

    Returns the results in image order and the files that could not be read as images (not cached, so a
    file repaired later is evaluated by the next run)."""
    done = _cache_load(cache)
    skipped: list[SkippedImage] = []
    todo = [p for p in images if p.name not in done]
    bar = _progress(len(images), desc, quiet)
    bar.update(len(images) - len(todo))
    sink = open(cache, "a") if cache else None  # noqa: SIM115
    try:

        def record(r: ImageResult | SkippedImage) -> None:
            bar.update(1)
            if isinstance(r, SkippedImage):
                skipped.append(r)
                return
            done[r.image] = r
            if sink:
                sink.write(json.dumps(asdict(r)) + "\n")
                sink.flush()

        if workers > 1 and loader is not None and len(todo) > 1:
            import multiprocessing as mp

            with ProcessPoolExecutor(
                workers, mp_context=mp.get_context("spawn"), initializer=_init_worker, initargs=(loader, 1, effort)
            ) as pool:
                for r in pool.map(_worker_learned, todo):
                    record(r)
        else:
            assert one is not None
            for p in todo:
                record(_guarded(one, p))
    finally:
        bar.close()
        if sink:
            sink.close()
    return [done[p.name] for p in images if p.name in done], skipped


def mean_point(label: str, quality: float, results: Iterable[ImageResult]) -> RDPoint:
    rs = list(results)

    def avg(key: str) -> float:
        vals = [getattr(r, key) for r in rs if math.isfinite(getattr(r, key))]
        return float(np.mean(vals)) if vals else math.nan

    return RDPoint(
        label, quality, avg("bpp"), avg("psnr"), avg("ms_ssim"), avg("encoding_time"), avg("decoding_time"), len(rs)
    )


@dataclass(frozen=True)
class EvalSummary:
    point: RDPoint
    per_image: list[ImageResult]
    skipped: tuple[SkippedImage, ...] = ()

    # shortcuts used by release tooling
    @property
    def bpp(self) -> float:
        return self.point.bpp

    @property
    def psnr(self) -> float:
        return self.point.psnr

    @property
    def ms_ssim(self) -> float:
        return self.point.ms_ssim

    @property
    def images(self) -> int:
        return self.point.images


def _check_any(dataset: str | Path, results: list[ImageResult], skipped: list[SkippedImage]) -> None:
    if not results:
        raise InputError(f"none of the {len(skipped)} image files in {dataset} could be read: {skipped[0].reason}")


def cache_name(codec, backend: str = "torch", effort: int = 0) -> str:
    """File name of a codec's per-image results: the entry's full identity (architecture, quality, metric,
    version), its weights fingerprint, the backend and the encoder effort (above 0), so no other entry,
    retrained weights or other effort reuses them."""
    e = codec.entry
    version = re.sub(r"[^A-Za-z0-9._-]", "_", e.version)
    suffix = f"-effort{effort}" if effort else ""
    return f"{e.arch}-q{format_level(e.point)}-{e.metric}-v{version}-{codec.fingerprint.hex()}-{backend}{suffix}.jsonl"


def evaluate_codec(
    codec,
    dataset: str | Path,
    *,
    label: str | None = None,
    cache: Path | None = None,
    workers: int = 1,
    loader: Callable[[], Any] | None = None,
    quiet: bool = True,
    effort: int = 0,
) -> EvalSummary:
    """One learned codec over a folder, encoding at `effort` (`Codec.compress`)."""
    images, _ = list_images(dataset)
    if not images:
        raise InputError(f"{dataset} has no images")
    label = label or str(codec.entry)
    results, skipped = run_images(
        images,
        functools.partial(_learned_one, codec, effort=effort),
        desc=label,
        cache=cache,
        workers=workers,
        loader=loader,
        quiet=quiet,
        effort=effort,
    )
    _check_any(dataset, results, skipped)
    return EvalSummary(mean_point(label, codec.entry.point, results), results, tuple(skipped))


def evaluate_classical(
    name: str,
    dataset: str | Path,
    qualities: Iterable[int] | None = None,
    *,
    cache_dir: Path | None = None,
    quiet: bool = True,
) -> list[EvalSummary]:
    from zoo.evaluation.classical import get_classical

    codec = get_classical(name)
    images, _ = list_images(dataset)
    if not images:
        raise InputError(f"{dataset} has no images")
    out = []
    for q in qualities or codec.qualities:
        cache = cache_dir / f"{name}-q{q}.jsonl" if cache_dir else None
        results, skipped = run_images(
            images, functools.partial(_classical_one, codec, q), desc=f"{name} q{q}", cache=cache, quiet=quiet
        )
        _check_any(dataset, results, skipped)
        out.append(EvalSummary(mean_point(name, q, results), results, tuple(skipped)))
    return out


def compressai_layout(
    name: str, description: str, points: list[RDPoint], per_image: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """CompressAI's results JSON: one value per quality, in quality order.

    `per_image`, one dict per point with a "quality" key, goes under an extra top-level "per_image" key
    (same order as "results"), which readers of CompressAI's layout ignore."""
    pts = sorted(points, key=lambda p: p.quality)
    layout: dict[str, Any] = {
        "name": name,
        "description": description,
        "results": {
            "quality": [p.quality for p in pts],
            "bpp": [p.bpp for p in pts],
            "psnr-rgb": [p.psnr for p in pts],
            "ms-ssim-rgb": [p.ms_ssim for p in pts],
            "encoding_time": [p.encoding_time for p in pts],
            "decoding_time": [p.decoding_time for p in pts],
        },
    }
    if per_image is not None:
        layout["per_image"] = sorted(per_image, key=lambda d: d["quality"])
    return layout


def per_image_record(summary: EvalSummary, **identity: Any) -> dict[str, Any]:
    """One point's per-image figures for the "per_image" key of the results JSON."""
    return {
        "quality": summary.point.quality,
        **identity,
        "images": [asdict(r) for r in summary.per_image],
        "skipped": [s.image for s in summary.skipped],
    }
