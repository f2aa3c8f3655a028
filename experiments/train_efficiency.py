"""Quality per CPU-hour: CompressAI's training recipe against ours, for the same wall-clock budget.

    python experiments/train_efficiency.py                # 30 minutes each, both at once, one thread each
    python experiments/train_efficiency.py --minutes 10
    python experiments/train_efficiency.py --clock cpu    # 30 minutes of each process's own CPU time

baseline: CompressAI's examples/train.py settings. bmshj2018-hyperprior at quality 3's λ, Adam 1e-4, aux Adam
          1e-3, gradient clipping 1.0, batch 16 of 256-px crops, constant learning rate.
ours:     the zoo recipe. bmshj2018-hyperprior-vr with λ sampled per example over the whole ladder, read at
          level 3; see RECIPE below and docs/history.md.

Both start from the same random initialisation (seed 0, N=128, M=192), train on the same data
(wallpapers + photos 001-035), and run as two processes at the same time with one thread each, so a busy
machine slows both alike (`--clock cpu` makes the budget each process's own CPU time instead, so a busy
machine does not shrink it; data loading runs in-process and counts). Then both are validated at quality
3's λ on photos 036-039 with real bitstreams (λ·255²·MSE + bpp), and both are coded on a Kodak crop. The
last line is
`baseline_loss=<x> ours_loss=<y> ratio=<y/x>`.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from zoo.precision import cpu_has_fast_bf16  # noqa: E402

SHARED = REPO.parent / "shared" / "datasets"

BASELINE = dict(
    arch="bmshj2018-hyperprior", quality=3, batch_size=16, patch=256, lr=1e-4, scheduler="plateau", clip=1.0
)
# The recipe measured to give the most quality per CPU-hour on 2 cores (docs/history.md): bfloat16 autocast
# of the convolutions with channels-last tensors, compiled (the CPU's AMX units: 2.65x the steps per
# CPU-second of float32; the entropy models, GDN and the pixel convolutions stay float32), a larger learning
# rate with a short warm-up and a cosine decay over the budget, smaller batches (more updates per hour).
RECIPE = dict(
    arch="bmshj2018-hyperprior-vr",
    quality=0,
    batch_size=8,
    patch=256,
    lr=5e-4,
    scheduler="cosine",
    clip=1.0,
    warmup_steps=50,
    amp="bf16",
    channels_last=True,
    compile=True,
    val_levels=(3,),
)
if not cpu_has_fast_bf16():  # emulated bf16 is slower than float32: the recipe keeps float32 there
    RECIPE.update(amp=None, channels_last=False)


def _data(root: Path) -> tuple[Path, Path]:
    train, val = root / "train", root / "val"
    train.mkdir(parents=True)
    val.mkdir()
    for p in sorted((SHARED / "wallpapers").glob("*.jpg")):
        (train / f"w{p.name}").symlink_to(p)
    for p in sorted((SHARED / "photos").glob("*.png")):
        (val if p.stem >= "036" else train).joinpath(p.name).symlink_to(p)
    return train, val


def _train(name: str, settings: dict, train: Path, val: Path, out: Path, minutes: float, clock: str, queue) -> None:
    import torch

    torch.set_num_threads(1)
    from zoo.train.trainer import TrainConfig, Trainer

    cfg = TrainConfig(
        train_dir=str(train),
        val_dir=str(val),
        out=str(out / name),
        max_minutes=minutes,
        budget_clock=clock,
        val_every=10**9,
        ckpt_every=10**9,
        workers=0,
        seed=0,
        widths={"N": 128, "M": 192},
        quiet=True,
        **settings,
    )
    # seed 0 for both: the variable-rate model builds the same layers in the same order, then its gains
    trainer = Trainer(cfg)
    val_result = trainer.run()
    queue.put((name, trainer.step, val_result))


def _kodak_crop(out: Path, name: str, arch: str) -> tuple[float, float]:
    """bpp and PSNR of the final model on kodim23's centre 512x512, at quality/level 3."""

    from zoo import bitstream
    from zoo.codec import Codec
    from zoo.compressed import EntryId
    from zoo.evaluation.metrics import psnr_rgb
    from zoo.imageio import read_image, to_uint8
    from zoo.registry import create_model, get_arch, load_checkpoint

    model = create_model(arch, N=128, M=192)
    model.load_state_dict(load_checkpoint(out / name / "last.pt")[0])
    model.update(force=True)
    level = None
    if get_arch(arch).variable_rate:
        model, level = model.fold(3), 3.0
    codec = Codec(model.eval(), EntryId(arch, 0 if level else 3, "mse", "bench", level), bytes(16), tile_size=0)
    x, _ = read_image(SHARED / "kodak" / "kodim23.png")
    h, w = x.shape[-2:]
    crop = x[:, (h - 512) // 2 : (h + 512) // 2, (w - 512) // 2 : (w + 512) // 2]
    data = bitstream.dumps(codec.compress(crop))
    rec = codec.decompress(bitstream.loads(data))
    return 8 * len(data) / (crop.shape[1] * crop.shape[2]), psnr_rgb(to_uint8(crop), to_uint8(rec))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0, help="training budget of each recipe")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="what the budget counts: the wall clock (default), or each process's own CPU time (on a busy machine)",
    )
    parser.add_argument("--keep", help="keep the runs in this folder")
    args = parser.parse_args()
    if not (SHARED / "wallpapers").exists():
        print(f"needs {SHARED}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        train, val = _data(root / "data")
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        t0 = time.perf_counter()
        procs = [
            ctx.Process(target=_train, args=(name, settings, train, val, root, args.minutes, args.clock, queue))
            for name, settings in (("baseline", BASELINE), ("ours", RECIPE))
        ]
        for p in procs:
            p.start()
        results = {}
        for _ in procs:
            name, steps, val_result = queue.get()
            results[name] = (steps, val_result)
        for p in procs:
            p.join()
        wall = time.perf_counter() - t0
        what = "wall clock" if args.clock == "wall" else "CPU time each"
        print(f"both trained for {args.minutes:g} minutes of {what}, one thread each ({wall / 60:.1f} min in all)")
        for name, settings in (("baseline", BASELINE), ("ours", RECIPE)):
            steps, v = results[name]
            bpp, psnr = _kodak_crop(root, name, str(settings["arch"]))
            print(
                f"{name:<9} {settings['arch']:<24} steps {steps:>5}  val loss {v['loss']:.4f}  val bpp {v['bpp']:.4f} "
                f"PSNR {v['psnr']:.2f}  | kodim23 512² crop: bpp {bpp:.4f} PSNR {psnr:.2f}"
            )
        x, y = results["baseline"][1]["loss"], results["ours"][1]["loss"]
        print(f"baseline_loss={x:.4f} ours_loss={y:.4f} ratio={y / x:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
