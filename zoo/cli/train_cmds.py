"""`zoo train` and `zoo release`: produce new zoo entries."""

from __future__ import annotations

import argparse
from pathlib import Path

from zoo.points import LEVEL_RANGE, METRICS


def cmd_train(args: argparse.Namespace) -> int:
    import torch

    from zoo.train.trainer import TrainConfig, train

    if args.threads:
        torch.set_num_threads(args.threads)
    widths = {k: v for k, v in (("N", args.N), ("M", args.M)) if v}
    cfg = TrainConfig(
        arch=args.arch,
        quality=args.quality or 0,
        metric=args.metric,
        train_dir=args.train,
        val_dir=args.val,
        out=args.out,
        steps=args.steps,
        epochs=args.epochs,
        batch_size=args.batch_size,
        patch=args.patch,
        lr=args.lr,
        scheduler=args.scheduler,
        val_every=args.val_every,
        ckpt_every=args.ckpt_every,
        resume=args.resume,
        init=args.init,
        init_parts=tuple(x for x in (args.init_parts or "").split(",") if x),
        init_widen=args.init_widen,
        init_context=args.init_context,
        entropy_lr=args.entropy_lr,
        amp=args.amp,
        channels_last=args.channels_last,
        ema_decay=args.ema,
        compile=args.compile,
        hard_samples=args.hard_samples,
        workers=args.workers,
        seed=args.seed,
        widths=widths,
        quiet=args.quiet,
        clip=args.clip,
        log_every=args.log_every,
        integer_share=args.integer_share,
        max_minutes=args.max_minutes,
        more_minutes=args.more_minutes,
        budget_clock=args.budget_clock,
        warmup_steps=args.warmup,
    )
    train(cfg)
    return 0


def cmd_release(args: argparse.Namespace) -> int:
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
    p = subparsers.add_parser("train", help="train a model and keep best/last checkpoints in --out")
    p.add_argument("--arch", required=True)
    p.add_argument("--quality", type=int, help="the quality to train (not for variable-rate architectures)")
    p.add_argument("--metric", default="mse", choices=METRICS)
    p.add_argument("--train", required=True, help="folder of training images")
    p.add_argument("--val", required=True, help="folder of validation images")
    p.add_argument("--out", required=True, help="run folder (checkpoints, log.csv, summary.json)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--steps", type=int)
    g.add_argument("--epochs", type=int)
    g.add_argument(
        "--max-minutes", type=float, help="a wall-clock budget: train this long (schedules follow the clock)"
    )
    g.add_argument(
        "--more-minutes",
        type=float,
        help="with --resume: go on this many minutes more; the budget becomes the minutes the run has trained "
        "(read from last.pt) plus these, so its cosine ends then (without last.pt: a fresh run this long)",
    )
    p.add_argument(
        "--budget-clock",
        choices=["wall", "cpu"],
        default="wall",
        help="what --max-minutes counts: the wall clock, or this process's CPU time (fair beside other work)",
    )
    p.add_argument("--warmup", type=int, default=0, help="linear learning-rate warm-up over this many steps")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--patch", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--scheduler", default="plateau", choices=["plateau", "cosine", "multistep", "poly"])
    p.add_argument("--val-every", type=int, default=500)
    p.add_argument("--ckpt-every", type=int, default=200)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--clip", type=float, default=1.0, help="gradient-norm clipping (0: off)")
    p.add_argument("--resume", action="store_true", help="continue exactly from OUT/last.pt")
    p.add_argument("--init", help="warm start from an entry folder, a checkpoint, or ARCH:QUALITY from the zoo")
    p.add_argument(
        "--init-parts", help="with --init: only these submodules, comma-separated (e.g. g_a,g_s from another arch)"
    )
    p.add_argument(
        "--init-widen", action="store_true", help="with --init: grow a narrower model into this quality's widths"
    )
    p.add_argument(
        "--init-context",
        default="identity",
        help="--init from a mean-scale model into mbt2018(-vr): how the new context parts start (identity: exactly "
        "the mean-scale model's predictions; default: PyTorch's initialization)",
    )
    p.add_argument("--entropy-lr", type=float, help="own learning rate for a fresh entropy bottleneck's density")
    p.add_argument(
        "--amp", choices=["bf16"], help="bf16 autocast of the transforms (entropy models stay float32); CPU or GPU"
    )
    p.add_argument(
        "--channels-last",
        action="store_true",
        help="channels-last tensors (with --amp bf16 on a CPU with AMX: about 2.5x the steps per CPU-second)",
    )
    p.add_argument(
        "--ema",
        type=float,
        default=0.0,
        metavar="DECAY",
        help="keep a moving average of the weights (e.g. 0.995): validated, saved as the checkpoint's weights",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the network")
    p.add_argument("--hard-samples", action="store_true", help="sample images by their running RD loss")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--integer-share",
        type=float,
        default=0.5,
        help=f"variable-rate: share of examples at integer levels (the rest uniform in {LEVEL_RANGE})",
    )
    p.add_argument("--N", type=int, help="override the quality's width N")
    p.add_argument("--M", type=int, help="override the quality's width M")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser("release", help="turn a training run into an entry folder")
    p.add_argument("run")
    p.add_argument("--version", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--eval", help="dataset folder to measure the model card's figures on (e.g. Kodak)")
    p.add_argument("--checkpoint", default="best.pt", choices=["best.pt", "last.pt"])
    p.add_argument("--half", action="store_true", help="store fp16 weights (tables computed from them)")
    p.add_argument("--manifest", help="add the entry to this manifest ('package' for zoo/manifest.json)")
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
