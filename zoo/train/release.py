"""Turn a training run into a zoo entry folder (and, for this repository's own releases, a manifest line)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zoo.entry import (
    ENTRY_FILES,
    EntryInfo,
    load_entry,
    read_config,
    save_entry,
    sha256_file,
    version_key,
)
from zoo.entry_codec import codec_for_model
from zoo.errors import InputError
from zoo.manifest import DEFAULT_ORG, Manifest, ManifestEntry, repo_for, tag_for
from zoo.registry import create_model, get_arch, load_checkpoint
from zoo.train.config import describe_data


def _run_model(run: Path, checkpoint: str):
    cfg_path, ckpt_path = run / "config.json", run / checkpoint
    if not cfg_path.exists() or not ckpt_path.exists():
        raise InputError(f"{run} is not a finished training run (needs config.json and {checkpoint})")
    cfg = json.loads(cfg_path.read_text())
    state, ckpt = load_checkpoint(ckpt_path)
    model = create_model(cfg["arch"], cfg["quality"], **cfg.get("widths", {}))
    model.load_state_dict(state)
    summary_path = run / "summary.json"
    recipe = ("batch_size", "patch", "lr", "scheduler", "init", "amp", "channels_last", "compile", "ema_decay")
    summary: dict[str, Any] = {k: cfg.get(k) for k in recipe}
    summary.update(
        {
            # the data the run read; the card names the data only as --dataset-name or the recipe gives it
            "train_dir": describe_data(cfg["train_dir"])
            if isinstance(cfg["train_dir"], list)
            else Path(cfg["train_dir"]).name,
            "steps": int(ckpt["step"]),
            "wall_time_s": round(float(ckpt.get("wall", 0.0)), 1),
            **({"cpu_hours": round(float(ckpt["cpu_s"]) / 3600, 3)} if "cpu_s" in ckpt else {}),
            **({"gpu_minutes": round(float(ckpt["gpu_s"]) / 60, 2)} if ckpt.get("gpu_s") else {}),
            **({"hardware": "; ".join(ckpt["hardware"])} if ckpt.get("hardware") else {}),
        }
    )
    if summary_path.exists():
        summary.update(json.loads(summary_path.read_text()))
        summary.pop("dataset", None)  # the run's folder again, by its full path: train_dir above names it
    summary.update({"checkpoint": checkpoint, "checkpoint_step": int(ckpt["step"])})
    return model.eval(), cfg, summary


def recorded_total_cpu_hours(entry_dir: str | Path) -> float | None:
    """The training compute behind an entry, as its card records it: `total_cpu_hours` (its own run plus the
    lineage it started from), else its own run's `cpu_hours` plus any `lineage_cpu_hours`; None if unrecorded."""
    if not Path(entry_dir).is_dir():  # a run checkpoint, a Hub name: no card to read
        return None
    training = read_config(entry_dir).training
    if "total_cpu_hours" in training:
        return float(training["total_cpu_hours"])
    if "cpu_hours" in training:
        return float(training["cpu_hours"]) + float(training.get("lineage_cpu_hours", 0.0))
    return None


def recorded_total_gpu_minutes(entry_dir: str | Path) -> float:
    """The GPU time behind an entry, as its card records it (`total_gpu_minutes`, else its run's own
    `gpu_minutes`); 0 for an entry trained on CPUs alone, or anything that is not an entry folder."""
    if not Path(entry_dir).is_dir():
        return 0.0
    training = read_config(entry_dir).training
    return float(training.get("total_gpu_minutes", training.get("gpu_minutes", 0.0)))


def _add_lineage(
    summary: dict[str, Any],
    cfg: dict[str, Any],
    lineage_cpu_hours: float | None,
    lineage_gpu_minutes: float | None = None,
) -> None:
    """Compute across warm starts: the run's own CPU time plus what its --init entry had behind it
    (`lineage_cpu_hours`: given, or read from that entry's card; a fresh start has none), and the same for GPU
    minutes, recorded only where a GPU took part."""
    init = cfg.get("init")
    if lineage_gpu_minutes is None:
        lineage_gpu_minutes = recorded_total_gpu_minutes(init) if init else 0.0
    own_gpu = float(summary.get("gpu_minutes", 0.0))
    if lineage_gpu_minutes or own_gpu:
        summary["lineage_gpu_minutes"] = round(lineage_gpu_minutes, 2)
        summary["total_gpu_minutes"] = round(lineage_gpu_minutes + own_gpu, 2)
    if lineage_cpu_hours is None:
        lineage_cpu_hours = recorded_total_cpu_hours(init) if init else 0.0
    if lineage_cpu_hours is None or "cpu_hours" not in summary:
        return
    summary["lineage_cpu_hours"] = round(lineage_cpu_hours, 3)
    summary["total_cpu_hours"] = round(lineage_cpu_hours + float(summary["cpu_hours"]), 3)


def release(
    run: str | Path,
    version: str,
    out: str | Path,
    eval_dir: str | Path | None = None,
    checkpoint: str = "best.pt",
    half: bool = False,
    training: dict[str, Any] | None = None,
    lineage_cpu_hours: float | None = None,
    lineage_gpu_minutes: float | None = None,
) -> EntryInfo:
    """Entry folder from a run: tables computed from the weights as shipped, the card filled from an
    evaluation on `eval_dir` (real files: bpp from their size). `lineage_cpu_hours`: the core-hours behind the
    run's warm start, when its card does not record them (default: read from the --init entry's card);
    `lineage_gpu_minutes` likewise for GPU time."""
    model, cfg, summary = _run_model(Path(run), checkpoint)
    _add_lineage(summary, cfg, lineage_cpu_hours, lineage_gpu_minutes)
    summary.update(training or {})
    kwargs = dict(
        arch=cfg["arch"], quality=cfg["quality"], metric=cfg["metric"], version=version, training=summary, half=half
    )
    info = save_entry(model, out, **kwargs)  # type: ignore[arg-type]
    if eval_dir and get_arch(cfg["arch"]).variable_rate:
        return _release_levels(model, out, eval_dir, kwargs)
    if eval_dir:
        import zoo
        from zoo.evaluation.runner import evaluate_codec

        result = evaluate_codec(zoo.load_local(out), eval_dir)
        kodak = {
            "bpp": result.bpp,
            "psnr": result.psnr,
            "ms_ssim": result.ms_ssim,
            "images": result.images,
            "dataset": Path(eval_dir).name,
        }
        if half:  # what storing fp16 costs, measured on the same images against the fp32 weights
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                save_entry(model, tmp, **{**kwargs, "half": False})  # type: ignore[arg-type]
                full = evaluate_codec(zoo.load_local(tmp), eval_dir)
            summary["fp16_psnr_loss_db"] = round(full.psnr - result.psnr, 4)
            summary["fp16_bpp_change"] = round(result.bpp - full.bpp, 5)
        shipped, _ = load_entry(out)  # the weights as stored: the card describes exactly those
        info = save_entry(shipped, out, **kwargs, eval_results={"kodak": kodak})  # type: ignore[arg-type]
    return info


def _release_levels(model, out: str | Path, eval_dir: str | Path, kwargs: dict[str, Any]) -> EntryInfo:
    """A variable-rate entry's card: every integer level evaluated on `eval_dir` with real files, each level
    run as the standard model it folds into (the weights as stored)."""
    from zoo.evaluation.runner import evaluate_codec

    shipped, info = load_entry(out)  # the weights as stored, read once for every level
    levels: dict[str, dict[str, Any]] = {}
    for name, point in sorted(info.levels.items(), key=lambda kv: float(kv[0])):
        result = evaluate_codec(codec_for_model(shipped, info, level=float(name)), eval_dir)
        kodak = {"bpp": result.bpp, "psnr": result.psnr, "ms_ssim": result.ms_ssim, "images": result.images}
        levels[name] = {**point, "kodak": {**kodak, "dataset": Path(eval_dir).name}}
    return save_entry(shipped, out, **kwargs, levels=levels)


def manifest_line(
    info: EntryInfo, folder: Path, repo_root: Path, org: str = DEFAULT_ORG, current_for: list[int] | None = None
) -> dict[str, Any]:
    """The manifest's record of a released entry. A variable-rate entry lists each level's Kodak figures,
    and `current_for` names the qualities of its base architecture that `zoo.load` should serve from it."""
    return manifest_entry(info, folder, repo_root, org, current_for).to_json()


def manifest_entry(
    info: EntryInfo, folder: Path, repo_root: Path, org: str = DEFAULT_ORG, current_for: list[int] | None = None
) -> ManifestEntry:
    """The manifest's record of a released entry (`manifest_line` is its JSON form)."""
    e = info.entry
    kodak = info.results.get("kodak", {})
    keys = ("bpp", "psnr", "ms_ssim")
    line: dict[str, Any] = {
        "arch": e.arch,
        "quality": e.quality,
        "metric": e.metric,
        "version": e.version,
        "repo": repo_for(e.arch, e.quality, e.metric, org, info.variable_rate),
        "revision": tag_for(e.version),
        "files": {f: sha256_file(folder / f) for f in ENTRY_FILES},
        "kodak": {k: kodak[k] for k in keys if k in kodak},
        "path": str(folder.resolve().relative_to(repo_root)),
    }
    if info.variable_rate:
        line["levels"] = {
            name: {k: p["kodak"][k] for k in keys if k in p.get("kodak", {})} for name, p in info.levels.items()
        }
        line["current_for"] = sorted(current_for or [])
    elif current_for:
        raise InputError(f"{e} is fixed-rate: only a variable-rate entry is marked current for qualities")
    return ManifestEntry(**line)


def choose_current_for(
    arch: str, metric: str, levels: dict[str, dict[str, float]], entries: list | None = None
) -> list[int]:
    """The base architecture's qualities a variable-rate entry should serve, from Kodak figures, keeping the
    served ladder monotone (each quality more bits and more quality than the one below):

    - a quality with no fixed-rate entry: its level, where that keeps the ladder monotone;
    - a quality with one: its level where the level is at least as good as the fixed-rate ladder at the same
      rate: its PSNR (MS-SSIM for ms-ssim entries) is no lower than the ladder's, interpolated linearly in
      log-bpp between neighbouring points, or beyond the ladder's ends extended along its end segment (the
      ladder's own trend); a single-point ladder must be dominated (no more bits, no less quality);
    - where the choice would break monotony and the other would not, the other (a fixed entry below a level
      served for the quality under it is never served)."""
    import math

    base = get_arch(arch).base
    key = "psnr" if metric == "mse" else "ms_ssim"
    newest: dict[int, Any] = {}
    for e in entries if entries is not None else Manifest.read():
        if e.arch == base and e.metric == metric and e.kodak.get(key) is not None:
            if e.quality not in newest or version_key(e.version) > version_key(newest[e.quality].version):
                newest[e.quality] = e
    ladder = sorted((math.log(e.kodak["bpp"]), e.kodak[key]) for e in newest.values())

    def ladder_at(log_bpp: float) -> float | None:
        if len(ladder) < 2:
            return None
        segments = list(zip(ladder, ladder[1:], strict=False))
        inside = [s for s in segments if s[0][0] <= log_bpp <= s[1][0]]
        (x0, y0), (x1, y1) = inside[0] if inside else segments[0] if log_bpp < ladder[0][0] else segments[-1]
        return y0 + (y1 - y0) * (log_bpp - x0) / (x1 - x0) if x1 > x0 else max(y0, y1)

    chosen, served = [], None  # served: the point zoo.load gives for the quality below

    def monotone(p: dict[str, float]) -> bool:
        return served is None or (p["bpp"] > served["bpp"] and p[key] > served[key])

    for q in range(1, 9):
        point = levels.get(str(q)) or levels.get(f"{q:.1f}")
        fixed = newest.get(q)
        if point is None:
            served = fixed.kodak if fixed is not None else served
            continue
        if fixed is None:
            if monotone(point):
                chosen.append(q)
                served = point
            continue
        reference = ladder_at(math.log(point["bpp"]))
        if reference is not None:
            better = point[key] >= reference
        else:
            better = point["bpp"] <= fixed.kodak["bpp"] and point[key] >= fixed.kodak[key]
        if monotone(fixed.kodak) != monotone(point):
            better = monotone(point)
        if better:
            chosen.append(q)
        served = point if better else fixed.kodak
    return chosen


def add_to_manifest(line: dict[str, Any] | ManifestEntry, manifest: Path) -> None:
    """Add a released entry's line to a manifest file (`Manifest.add`), replacing one of the same version."""
    entry = line if isinstance(line, ManifestEntry) else ManifestEntry(**line)
    Manifest.read(manifest).add(entry).write()


@dataclass(frozen=True)
class FamilyRelease:
    info: EntryInfo
    folder: Path
    line: dict[str, Any]  # what the manifest now lists for it
    curve_point: dict[str, Any] | None  # the learning-curve point added, if a curve file was given


def release_family(
    recipe_path: str | Path,
    run: str | Path,
    version: str,
    *,
    repo_root: str | Path = ".",
    manifest: str | Path | None = None,
    eval_dir: str | Path | None = None,
    note: str | None = None,
    lineage_cpu_hours: float | None = None,
    lineage_gpu_minutes: float | None = None,
    learning_curve: str | Path | None = None,
) -> FamilyRelease:
    """Release version `version` of a recipe's entry family from a run of it: the entry folder at
    `model_store/entries/<family>/<metric>/v<version>` under `repo_root`, its card naming the recipe (file and
    sha256; the run's own copy of it where the run kept one), measured on the recipe's evaluation set
    (`eval_dir` overrides), added to `manifest` (default: the package's) and, for a variable-rate family,
    marked current for the base qualities where it is at least as good as the fixed-rate ladder. Releases of
    different families may run at once: each adds its line to the manifest under a lock. With `learning_curve`,
    a variable-rate release also adds its point to that file."""
    from zoo.errors import InputError
    from zoo.hub import load_manifest, manifest_path
    from zoo.train.recipe import read_recipe, root_of

    recipe = read_recipe(recipe_path)
    run, root = Path(run), Path(repo_root).resolve()
    kept = run / "recipe.toml"  # what `zoo train --recipe` keeps with the run
    trained_with = read_recipe(kept) if kept.exists() else recipe
    if trained_with.family != recipe.family:
        raise InputError(f"{run} trained {trained_with.family}, not {recipe.family} ({recipe.path})")
    if trained_with is not recipe:
        trained_with = dataclasses.replace(trained_with, path=recipe.path)  # named by its place in the checkout
    metric = str(recipe.settings.get("metric", "mse"))
    out = root / "model_store" / "entries" / recipe.family / metric / f"v{version}"
    target = Path(manifest) if manifest else manifest_path()
    if any(e.arch == recipe.family and e.metric == metric and e.version == version for e in load_manifest(target)):
        raise InputError(f"{recipe.family} {version} is already released in {target}")
    training: dict[str, Any] = {**trained_with.card(root)}
    if recipe.dataset_name:
        training["dataset"] = recipe.dataset_name
    if note:
        training["note"] = note
    evaluate_on = Path(eval_dir) if eval_dir else root_of(recipe) / str(recipe.release["eval"])
    info = release(
        run,
        version,
        out,
        evaluate_on,
        checkpoint=str(recipe.release["checkpoint"]),
        half=bool(recipe.release["half"]),
        training=training,
        lineage_cpu_hours=lineage_cpu_hours,
        lineage_gpu_minutes=lineage_gpu_minutes,
    )
    with _locked(target):
        line = manifest_line(info, out, root)
        if info.variable_rate:
            # the fixed-rate ladder it is compared with is the one in the manifest it joins
            line["current_for"] = choose_current_for(info.entry.arch, metric, line["levels"], load_manifest(target))
        add_to_manifest(line, target)
    point = None
    if learning_curve and info.variable_rate:
        point = learning_point(out)
        add_learning_point(Path(learning_curve), point)
    return FamilyRelease(info, out, line, point)


@contextlib.contextmanager
def _locked(manifest: Path) -> Iterator[None]:
    """Hold an exclusive lock beside the manifest while reading, changing and writing it."""
    import fcntl

    with open(manifest.with_name(manifest.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _init_name(init: str) -> str:
    """How a note names a warm start: an entry folder by its version, a checkpoint by its run and file."""
    path = Path(init)
    return f"{path.parent.name}/{path.name}" if path.suffix == ".pt" else (path.name or "?")


def learning_point(folder: str | Path) -> dict[str, Any]:
    """The learning-curve point of a released variable-rate entry, from its card: Kodak PSNR at 0.5 bpp
    (interpolated in log-rate between levels) against the training compute recorded behind it."""
    from zoo.errors import InputError
    from zoo.evaluation.bd import psnr_at

    card = read_config(folder)
    figures = [lv["kodak"] for lv in card.levels.values() if "kodak" in lv]
    train = card.training
    if len(figures) < 2 or "total_cpu_hours" not in train:
        raise InputError(f"{folder}: needs Kodak figures at two levels or more and training.total_cpu_hours")
    psnr = psnr_at([f["bpp"] for f in figures], [f["psnr"] for f in figures])
    if psnr != psnr:  # NaN: 0.5 bpp outside the curve
        raise InputError(f"{folder}: its Kodak curve does not reach 0.5 bpp")
    lineage, own = train.get("lineage_cpu_hours", 0.0), train.get("cpu_hours", 0.0)
    steps = train.get("checkpoint_step", train.get("steps", "?"))
    gpu = f"; and {train['total_gpu_minutes']:.1f} GPU minutes" if train.get("total_gpu_minutes") else ""
    return {
        "arch": card.entry.arch,
        "curve": f"v{card.entry.version}, every level",
        "cpu_hours": round(float(train["total_cpu_hours"]), 2),
        "gpu_minutes": round(float(train.get("total_gpu_minutes", 0.0)), 1),
        "psnr_at_0.5": round(psnr, 3),
        "note": f"{lineage:.2f} core-hours of lineage + {own:.2f} of its run ({steps} steps from "
        f"{_init_name(str(train.get('init', '?')))}); process CPU time{gpu}",
    }


def add_learning_point(curve: Path, point: dict[str, Any]) -> None:
    """Add a point to a learning-curve file, replacing one of the same architecture and version."""
    points = json.loads(curve.read_text()) if curve.exists() else []
    points = [q for q in points if (q["arch"], q["curve"]) != (point["arch"], point["curve"])] + [point]
    curve.write_text(json.dumps(points, indent=2) + "\n")
