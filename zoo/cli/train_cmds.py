"""`zoo train` and `zoo release`: produce new zoo entries."""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from pathlib import Path
from typing import Any

from zoo.errors import InputError

if typing.TYPE_CHECKING:
    from zoo.train.config import TrainConfig
    from zoo.train.recipe import Recipe

from zoo.points import METRICS


def cmd_train(args: argparse.Namespace) -> int:
    import shutil

    import torch

    from zoo.train.trainer import train

    cfg, threads, recipe = train_config(args)
    if threads:
        torch.set_num_threads(threads)
    if recipe is not None:
        out = Path(cfg.out)
        kept = out / RUN_RECIPE
        if cfg.resume and (out / "summary.json").exists():
            raise InputError(f"{out} finished its cycle (summary.json): release it, then start the next in a new --out")
        if cfg.resume and kept.exists() and kept.read_bytes() != recipe.path.read_bytes():
            raise InputError(
                f"{out} was started with another version of {recipe.path}: resume it with --recipe {kept}, "
                "the copy it was started with"
            )
        out.mkdir(parents=True, exist_ok=True)
        if not (kept.exists() and kept.samefile(recipe.path)):
            shutil.copyfile(recipe.path, kept)  # the run carries the recipe it was trained with
    train(cfg)
    return 0


# The file a run folder keeps of the recipe it was trained with (zoo release names it in the model card).
RUN_RECIPE = "recipe.toml"

# TrainConfig fields whose flag is not the field's name (kept as users know them), and help texts; every other
# flag is generated from TrainConfig: its name, type and default come from the field.
FLAG_NAMES = {"train_dir": "--train", "val_dir": "--val", "ema_decay": "--ema", "warmup_steps": "--warmup"}
NOT_FLAGS = {"widths"}  # --N and --M instead
HELP: dict[str, dict] = {
    "arch": {"help": "architecture (the registry's name)"},
    "quality": {"type": int, "help": "the quality to train (not for variable-rate architectures)"},
    "metric": {"choices": METRICS},
    "train_dir": {"help": "folder of training images"},
    "val_dir": {"help": "folder of validation images"},
    "out": {"help": "run folder (checkpoints, log.csv, summary.json)"},
    "max_minutes": {"help": "a wall-clock budget: train this long (schedules follow the clock)"},
    "more_minutes": {
        "help": "with --resume: go on this many minutes more; the budget becomes the minutes the run has trained "
        "(read from last.pt) plus these, so its cosine ends then (without last.pt: a fresh run this long)"
    },
    "budget_clock": {
        "choices": ["wall", "cpu"],
        "help": "what --max-minutes counts: the wall clock, or this process's CPU time (fair beside other work)",
    },
    "warmup_steps": {"help": "linear learning-rate warm-up over this many steps"},
    "scheduler": {"choices": ["plateau", "cosine", "multistep", "poly"]},
    "clip": {"help": "gradient-norm clipping (0: off)"},
    "resume": {"help": "continue exactly from OUT/last.pt"},
    "init": {"help": "warm start from an entry folder, a checkpoint, or ARCH:QUALITY from the zoo"},
    "init_parts": {"help": "with --init: only these submodules, comma-separated (e.g. g_a,g_s from another arch)"},
    "init_widen": {"help": "with --init: grow a narrower model into this quality's widths"},
    "init_context": {
        "choices": ["identity", "default"],
        "help": "--init from a mean-scale model into mbt2018(-vr): how the new context parts start (identity: "
        "exactly the mean-scale model's predictions; default: PyTorch's initialization)",
    },
    "entropy_lr": {"help": "own learning rate for a fresh entropy bottleneck's density"},
    "context_lr": {"help": "own learning rate for a context model's context parts (grown from a mean-scale model)"},
    "train_only": {
        "help": "train only these submodules, comma-separated (the rest frozen), e.g. a grown context model's "
        "context_prediction,entropy_parameters"
    },
    "amp": {"choices": ["bf16"], "help": "bf16 autocast of the transforms (entropy models stay float32); CPU or GPU"},
    "channels_last": {
        "help": "channels-last tensors (with --amp bf16 on a CPU with AMX: about 2.5x the steps per CPU-second)"
    },
    "ema_decay": {
        "metavar": "DECAY",
        "help": "keep a moving average of the weights (e.g. 0.995): validated, saved as the checkpoint's weights",
    },
    "compile": {"help": "torch.compile the network"},
    "hard_samples": {"help": "sample images by their running RD loss"},
    "workers": {"help": "DataLoader workers"},
    "integer_share": {"help": "variable-rate: share of examples at integer levels (the rest uniform in [1, 8])"},
    "val_max_side": {"help": "validation images are centre crops of at most this many pixels a side"},
    "val_levels": {"help": "variable-rate: the levels validated, comma-separated"},
}


def _flag(name: str) -> str:
    return FLAG_NAMES.get(name, "--" + name.replace("_", "-"))


def _comma_list(item: type):
    def parse(text: str) -> tuple:
        try:
            return tuple(item(x) for x in text.split(",") if x)
        except ValueError:
            raise argparse.ArgumentTypeError(f"comma-separated values, not {text!r}") from None

    return parse


def _argument(name: str, kind: Any, default: Any) -> dict:
    """argparse keyword arguments for one TrainConfig field. Defaults are not set here: an absent flag leaves
    the recipe's value, else TrainConfig's default (`train_config`)."""
    kwargs: dict[str, Any] = {"default": argparse.SUPPRESS}
    if typing.get_args(kind) and typing.get_origin(kind) is not tuple:  # X | None, or a folder | files: the first
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    if kind is bool:
        kwargs["action"] = argparse.BooleanOptionalAction  # --compile / --no-compile: a recipe's true can be undone
    elif typing.get_origin(kind) is tuple:
        kwargs["type"] = _comma_list(typing.get_args(kind)[0])
    else:
        kwargs["type"] = kind if kind in (int, float, str) else str
    extra = dict(HELP.get(name, {}))
    if default not in (dataclasses.MISSING, None, ()) and kind is not bool:
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        extra["help"] = (extra.get("help", "") + f" (default: {shown})").strip()
    kwargs.update(extra)
    return kwargs


def add_config_flags(p: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field; the budget fields exclude each other."""
    from zoo.train.config import TrainConfig
    from zoo.train.recipe import BUDGET_KEYS, config_types

    types = config_types()
    budget = p.add_mutually_exclusive_group()
    for f in dataclasses.fields(TrainConfig):
        if f.name in NOT_FLAGS:
            continue
        target = budget if f.name in BUDGET_KEYS else p
        target.add_argument(_flag(f.name), dest=f.name, **_argument(f.name, types[f.name], f.default))


def resumed_settings(out: Path) -> dict[str, Any]:
    """What `out`'s last checkpoint trained under and a resume keeps unless a flag says otherwise: its budget
    (steps, epochs, minutes: the recipe's, or what --more-minutes made of it), so the cycle goes on as it was,
    and its starting point, which the release names. Nothing where there is no checkpoint."""
    from zoo.registry import load_checkpoint

    last = out / "last.pt"
    if not last.exists():
        return {}
    _, ckpt = load_checkpoint(last, mmap=True)  # the one checkpoint reader: a damaged file is a typed error
    saved = json.loads(ckpt["config"]) if isinstance(ckpt, dict) and "config" in ckpt else {}
    return {k: saved[k] for k in ("steps", "epochs", "max_minutes", "init") if k in saved}


def train_config(args: argparse.Namespace) -> tuple[TrainConfig, int | None, Recipe | None]:
    """The run's TrainConfig, threads and recipe: TrainConfig's defaults, overridden by the recipe's keys, those
    by the flags given. A budget flag replaces the recipe's whole budget (steps, epochs or minutes)."""
    from zoo.train.config import TrainConfig
    from zoo.train.recipe import BUDGET_KEYS, read_recipe, resolve_files, starting_point

    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    values: dict[str, Any] = {}
    recipe = None
    if args.recipe:
        recipe = read_recipe(args.recipe)
        values.update(recipe.settings)
        if any(k in given for k in BUDGET_KEYS):
            for k in BUDGET_KEYS:
                values.pop(k, None)
        if "train_dir" not in given:
            values["train_dir"] = tuple(resolve_files(recipe, recipe.train, args.data_root))
        if "val_dir" not in given:
            values["val_dir"] = tuple(resolve_files(recipe, recipe.val, args.data_root))
        values.setdefault("out", str(recipe.checkout / "runs" / recipe.family))  # runs/ is ignored by git
    values.update(given)
    kept: dict[str, Any] = {}
    if recipe is not None and values.get("resume"):
        kept = {k: v for k, v in resumed_settings(Path(values["out"])).items() if k not in given}
        if any(k in given for k in BUDGET_KEYS):  # a budget flag replaces the whole budget
            kept = {k: v for k, v in kept.items() if k not in BUDGET_KEYS}
        values.update(kept)  # the cycle as it was, not as the recipe would start one now
    if recipe is not None and "init" not in given and "init" not in kept:
        values["init"] = starting_point(recipe, values)
    threads = values.pop("threads", None)  # the recipe's [run] threads, unless the flag is given
    if args.threads is not None:
        threads = args.threads
    values.pop("first_init", None)
    widths = dict(values.pop("widths", {}) or {})
    widths.update({k: v for k, v in (("N", args.N), ("M", args.M)) if v})
    missing = [_flag(k) for k in ("arch", "train_dir", "val_dir", "out") if k not in values]
    if missing:
        raise InputError(f"give {', '.join(missing)} (or --recipe FILE)")
    values.setdefault("quality", 0)
    if "init_parts" in values and isinstance(values["init_parts"], str):
        values["init_parts"] = tuple(x for x in values["init_parts"].split(",") if x)
    for key in ("init_parts", "val_levels"):
        if key in values:
            values[key] = tuple(values[key])
    try:
        cfg = TrainConfig(**values, widths=widths)
    except TypeError as exc:
        raise InputError(f"not a training setting: {exc}") from None
    return cfg, threads, recipe


def cmd_release(args: argparse.Namespace) -> int:
    if args.recipe:
        return _release_recipe(args)
    if not args.out:
        raise InputError("give --out DIR (or --recipe FILE)")
    from zoo.train.release import manifest_entry, release

    extra = {"dataset": args.dataset_name} if args.dataset_name else {}
    if args.note:
        extra["note"] = args.note
    info = release(
        args.run,
        args.version,
        args.out,
        args.eval,
        checkpoint=args.checkpoint,
        half=args.half,
        training=extra,
        lineage_cpu_hours=args.lineage_cpu_hours,
        lineage_gpu_minutes=args.lineage_gpu_minutes,
    )
    kodak = info.results.get("kodak", {})
    figures = f" kodak bpp {kodak['bpp']:.4f} PSNR {kodak['psnr']:.2f} dB" if kodak else ""
    print(f"released {info.entry} to {args.out}{figures}")
    if args.manifest:
        from dataclasses import replace

        from zoo.manifest import Manifest, package_manifest_path

        manifest = Manifest.read(args.manifest if args.manifest != "package" else package_manifest_path())
        auto = args.current_for == "auto"
        line = manifest_entry(
            info,
            Path(args.out),
            Path(args.repo_root).resolve(),
            manifest.org,
            current_for=None if auto else args.current_for,
        )
        if auto and info.variable_rate:
            from zoo.train.release import choose_current_for

            # the fixed-rate ladder it is compared with is the one in the manifest it joins
            line = replace(
                line, current_for=choose_current_for(info.entry.arch, info.entry.metric, line.levels, manifest.entries)
            )
            print(f"current for qualities: {', '.join(map(str, line.current_for)) or 'none'}")
        manifest.add(line).write()
    return 0


def _release_recipe(args: argparse.Namespace) -> int:
    from zoo.train.release import release_family

    root = Path(args.repo_root)
    curve = args.learning_curve or root / "docs" / "results" / "learning_curve.json"
    done = release_family(
        args.recipe,
        args.run,
        args.version,
        repo_root=root,
        manifest=None if args.manifest in (None, "package") else args.manifest,
        eval_dir=args.eval,
        note=args.note,
        lineage_cpu_hours=args.lineage_cpu_hours,
        lineage_gpu_minutes=args.lineage_gpu_minutes,
        learning_curve=curve if args.learning_curve or curve.exists() else None,
    )
    print(f"released {done.info.entry} to {done.folder}")
    if "current_for" in done.line:
        print(f"current for qualities: {', '.join(map(str, done.line['current_for'])) or 'none'}")
    if done.curve_point:
        p = done.curve_point
        print(f"learning curve: {p['arch']} {p['curve']}, {p['cpu_hours']} core-hours, {p['psnr_at_0.5']:.2f} dB")
    return 0


def _non_negative(unit: str):
    """An argparse type: a finite, non-negative number of `unit`."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"a number of {unit}, not {text!r}") from None
        if not value >= 0 or value == float("inf"):
            raise argparse.ArgumentTypeError(f"a finite, non-negative number of {unit}, not {text!r}")
        return value

    return parse


def _qualities(text: str) -> list[int] | str:
    if text == "auto":
        return text
    from zoo.cli.eval_cmds import parse_qualities

    values = [q for q in parse_qualities(text) if q is not None]
    if any(not float(q).is_integer() for q in values):
        raise argparse.ArgumentTypeError(f"integer qualities only, not {text!r}")
    return [int(q) for q in values]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a model and keep best/last checkpoints in --out",
        description="Train from a recipe (--recipe recipes/FAMILY.toml: its settings, data and starting point) or "
        "from flags alone; a flag given overrides the recipe's key of the same name.",
    )
    p.add_argument("--recipe", help="a recipe file (recipes/FAMILY.toml); flags given override its keys")
    p.add_argument("--data-root", help="with --recipe: the folder its data sources are under (default: the recipe's)")
    add_config_flags(p)
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--N", type=int, help="override the quality's width N")
    p.add_argument("--M", type=int, help="override the quality's width M")
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser(
        "release",
        help="turn a training run into an entry folder",
        description="With --recipe: release a version of the recipe's family into model_store/entries, measured "
        "as the recipe says, named in its card, added to the manifest. Without: an entry folder at --out.",
    )
    p.add_argument("run")
    p.add_argument("--version", required=True)
    p.add_argument("--recipe", help="the recipe the run followed (recipes/FAMILY.toml): release that family")
    p.add_argument("--out", help="the entry folder to write (without --recipe)")
    p.add_argument("--eval", help="dataset folder to measure the model card's figures on (e.g. Kodak)")
    p.add_argument("--checkpoint", default="best.pt", choices=["best.pt", "last.pt"])
    p.add_argument("--half", action="store_true", help="store fp16 weights (tables computed from them)")
    p.add_argument(
        "--manifest", help="add the entry to this manifest ('package' for zoo/manifest.json, the default with --recipe)"
    )
    p.add_argument(
        "--learning-curve",
        type=Path,
        help="with --recipe: add the release's point to this file (default: docs/results/learning_curve.json "
        "under --repo-root, where it exists)",
    )
    p.add_argument("--repo-root", default=".", help="paths in the manifest are relative to this folder")
    p.add_argument("--dataset-name", help="training data as the model card should name it")
    p.add_argument("--note", help="a line of provenance for the model card")
    p.add_argument(
        "--lineage-cpu-hours",
        type=_non_negative("hours"),
        help="core-hours behind the run's warm start (default: the --init entry's recorded total); the card "
        "records them and total_cpu_hours",
    )
    p.add_argument(
        "--lineage-gpu-minutes",
        type=_non_negative("minutes"),
        help="GPU minutes behind the run's warm start (default: the --init entry's recorded total; a GPU run's "
        "checkpoint that is not an entry records none); the card records them and total_gpu_minutes",
    )
    p.add_argument(
        "--current-for",
        type=_qualities,
        help="variable-rate: the base architecture's qualities zoo.load serves from this entry (e.g. 1-8), or "
        "'auto': those with no fixed-rate entry and those where it is at least as good as the fixed-rate ladder",
    )
    p.set_defaults(func=cmd_release)
