"""Which training settings give the most validation quality per CPU-minute: a sweep of recipe variants.

    python experiments/recipe_sweep.py                                   # from scratch, the default variants
    python experiments/recipe_sweep.py --init runs/hp-vr/last.pt --cpu-minutes 8 \\
        --variant base:lr=1e-4 --variant lr3:lr=3e-4 --variant p128:batch_size=16,patch=128

Every variant starts from the same weights (seed 0; `--init` a run checkpoint or an entry folder to sweep a
fine-tuning regime instead of a fresh start) and trains for the same budget of its own process's CPU time,
one thread each, data loading in-process (so cheaper crops are counted), `--parallel` at a time. A busy
machine therefore slows a variant's clock but not its budget. Each variant is then validated with real
bitstreams at every level on photos 036-039 (λ·255²·MSE + bpp at the level's own λ), and the table gives the
loss at level 3, the mean over the levels, and the mean bpp/PSNR. The last line names the best variant by
mean loss. The start point is validated too (row `start`), so the gain of each variant is visible.

Variant settings are TrainConfig fields (lr, batch_size, patch, scheduler, warmup_steps, integer_share,
clip, aux_lr, amp=bf16, channels_last=1, ema_decay). The scheduler defaults to "plateau", which never fires
inside a sweep: a constant rate.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import queue as queue_mod
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"
sys.path.insert(0, str(REPO / "experiments"))

from train_efficiency import _data  # noqa: E402  (the same split: wallpapers + photos 001-035 / 036-039)

DEFAULT_VARIANTS = (
    "base:lr=1e-4",
    "lr3e-4:lr=3e-4",
    "p128:batch_size=16,patch=128",
    "lr3e-4-p128:lr=3e-4,batch_size=16,patch=128",
)
FIELDS = {
    "lr": float,
    "aux_lr": float,
    "batch_size": int,
    "patch": int,
    "scheduler": str,
    "warmup_steps": int,
    "integer_share": float,
    "clip": float,
    "amp": str,
    "ema_decay": float,
    "channels_last": lambda v: v.lower() in ("1", "true", "yes"),
}


def parse_variant(text: str) -> tuple[str, dict]:
    """`name:key=value,key=value` → (name, settings)."""
    name, _, body = text.partition(":")
    if not name or not body:
        raise SystemExit(f"--variant {text!r}: expected name:key=value[,key=value]")
    settings: dict = {}
    for item in body.split(","):
        key, _, value = item.partition("=")
        if key not in FIELDS:
            raise SystemExit(f"--variant {name}: unknown setting {key!r}; settings are {', '.join(FIELDS)}")
        settings[key] = FIELDS[key](value)
    return name, settings


def _config(name: str, settings: dict, args, train: Path, val: Path, out: Path):
    from zoo.train.trainer import TrainConfig

    base = dict(batch_size=8, patch=256, lr=1e-4, scheduler="plateau", clip=1.0)
    base.update(settings)
    return TrainConfig(
        arch=args.arch,
        quality=0,
        train_dir=str(train),
        val_dir=str(val),
        out=str(out / name),
        init=args.init,
        max_minutes=args.cpu_minutes,
        budget_clock="cpu",
        val_every=10**9,
        ckpt_every=10**9,
        workers=0,
        seed=0,
        widths={} if args.init else {"N": 128, "M": 192},
        quiet=True,
        **base,
    )


def _run(name: str, settings: dict, args, train: Path, val: Path, out: Path, queue) -> None:
    import torch

    torch.set_num_threads(1)
    from zoo.train.trainer import Trainer

    validate_only = settings.pop("validate_only", False)
    trainer = Trainer(_config(name, settings, args, train, val, out))
    t0 = time.perf_counter()
    if validate_only:
        trainer.validate()
    else:
        trainer.run()
    queue.put((name, trainer.step, trainer.last_levels, time.perf_counter() - t0))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="bmshj2018-hyperprior-vr")
    parser.add_argument("--init", help="start every variant from this run checkpoint or entry folder")
    parser.add_argument("--cpu-minutes", type=float, default=8.0, help="each variant's budget of CPU time")
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--variant", action="append", help="name:key=value[,key=value] (repeatable)")
    parser.add_argument("--keep", help="keep the runs in this folder")
    args = parser.parse_args()
    if not (SHARED / "wallpapers").exists():
        print(f"needs {SHARED}", file=sys.stderr)
        return 2
    variants: list[tuple[str, dict]] = [("start", {"validate_only": True})]
    variants += [parse_variant(v) for v in args.variant or DEFAULT_VARIANTS]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        train, val = _data(root / "data")
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        results: dict[str, tuple[int, dict, float]] = {}
        pending = list(variants)
        running: dict[str, mp.process.BaseProcess] = {}
        while pending or running:
            while pending and len(running) < args.parallel:
                name, settings = pending.pop(0)
                running[name] = ctx.Process(target=_run, args=(name, settings, args, train, val, root, queue))
                running[name].start()
            while True:
                try:
                    name, steps, levels, wall = queue.get(timeout=5)
                    break
                except queue_mod.Empty:
                    failed = [n for n, p in running.items() if p.exitcode not in (None, 0)]
                    if failed:
                        print(f"variant {failed[0]} failed (exit code {running[failed[0]].exitcode})", file=sys.stderr)
                        return 1
            running.pop(name).join()
            results[name] = (steps, levels, wall)
            print(f"  {name} done: {steps} steps in {wall / 60:.1f} min of wall clock", flush=True)
    print(f"{args.arch} from {args.init or 'a fresh start'}, {args.cpu_minutes:g} CPU-minutes per variant")
    print(f"{'variant':<16} {'settings':<44} {'steps':>5} {'loss@3':>8} {'mean loss':>9} {'bpp':>7} {'PSNR':>6}")
    best = None
    for name, settings in variants:
        steps, levels, _ = results[name]
        mean = {k: sum(v[k] for v in levels.values()) / len(levels) for k in ("loss", "bpp", "psnr")}
        shown = ",".join(f"{k}={v}" for k, v in settings.items() if k != "validate_only")
        shown = shown or "(no training)"
        print(
            f"{name:<16} {shown:<44} {steps:>5} {levels[3.0]['loss']:>8.4f} {mean['loss']:>9.4f} "
            f"{mean['bpp']:>7.4f} {mean['psnr']:>6.2f}"
        )
        if name != "start" and (best is None or mean["loss"] < best[1]):
            best = (name, mean["loss"])
    assert best is not None
    print(f"best={best[0]} mean_loss={best[1]:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
