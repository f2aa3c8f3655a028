"""Train on a lent GPU machine within the device tool's limits, and rehearse all of it on CPU.

docs/gpu-training.md is the walk-through. The steps:

    python scripts/gpu_train.py prepare --arch bmshj2018-hyperprior-vr --init ENTRY_OR_CKPT \
        [--arch mbt2018-mean-vr --init ...] --minutes 8
        # .gpu/: a training subset (JPEG, within --data-mib), each run's init weights, the settings, wheels
        # the GPU image lacks; model_store/entries leaves the index and .gpu/ is ignored, so what
        # travels stays under 64 MiB (it prints the size). Several --arch train side by side on the one GPU.
    device run: bash scripts/gpu/device.sh start 9      (carry [".gpu"])
    device run: bash scripts/gpu/device.sh poll 9       (no carry: .gpu/runs on the machine must stay)
    device run: bash scripts/gpu/device.sh again 4.8    (no carry, within 30 s of the last call: a second cycle
                                                         from each run's last checkpoint)
    python scripts/gpu_train.py assemble FILES_AT/ARCH --run runs/hp-vr-gpu   # a run folder zoo release reads
    python scripts/gpu_train.py restore                 # entries back in the index, the exclude line gone

    python scripts/gpu_train.py rehearse --steps 2      # every step above but the device call, on CPU
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"
GPU_DIR = ".gpu"
EXCLUDE_LINE = "/.gpu/"
TRAVEL_LIMIT = 64 * 1024 * 1024
SHARD_BYTES = 15 * 1024 * 1024  # files back from $OUT: at most 8, 16 MiB each
MAX_FILES_BACK = 8
ENTRIES = "model_store/entries"


def _git(repo: Path, *args: str, check: bool = True) -> str:
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise SystemExit(f"git {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def _exclude_file(repo: Path) -> Path:
    return repo / _git(repo, "rev-parse", "--git-path", "info/exclude").strip()  # relative to the repo


def travelling_files(repo: Path, carry: tuple[str, ...] = (GPU_DIR,)) -> list[Path]:
    """What the device tool sends: tracked files, untracked files git does not ignore, and carried paths."""
    names = _git(repo, "ls-files", "--cached", "--others", "--exclude-standard", "-z").split("\0")
    files = {repo / n for n in names if n and (repo / n).is_file()}
    for c in carry:
        root = repo / c
        if root.is_dir():
            files |= {p for p in root.rglob("*") if p.is_file()}
    return sorted(files)


def _encode_training_set(sources: list[Path], dest: Path, budget: int, quality: int = 90) -> int:
    """Every training image as a JPEG at `quality`, scaled down evenly if the set would exceed `budget` bytes
    (downscaling also softens the sources' own compression artefacts)."""
    from PIL import Image

    def encode(scale: float) -> list[bytes]:
        out = []
        for src in sources:
            with Image.open(src) as im:
                im = im.convert("RGB")
                if scale < 1:
                    im = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.LANCZOS)
                buf = io.BytesIO()
                im.save(buf, "JPEG", quality=quality)
                out.append(buf.getvalue())
        return out

    blobs, scale = encode(1.0), 1.0
    while sum(map(len, blobs)) > budget and scale > 0.4:
        scale *= 0.9 * (budget / sum(map(len, blobs))) ** 0.5
        blobs = encode(scale)
    dest.mkdir(parents=True, exist_ok=True)
    for src, blob in zip(sources, blobs, strict=True):
        (dest / f"{src.parent.name}-{src.stem}.jpg").write_bytes(blob)
    return sum(map(len, blobs))


def init_state(init: Path) -> dict:
    """The weights a GPU run starts from: a checkpoint's model, or an entry's tensors exactly as it stores them
    (fp16 weights stay fp16, half the bytes that travel; its single-element constants, such as the likelihood
    bound 1e-9, stay float32: rounded to fp16 that bound is 0, and a rate of log(0) made the first GPU runs'
    losses infinite)."""
    if init.is_file():
        from zoo.registry import load_checkpoint

        return load_checkpoint(init)[0]
    if init.is_dir():
        from zoo.entry import entry_state_dict

        return entry_state_dict(init)[0]  # verified (config, shapes, fingerprint) before it travels
    raise SystemExit(f"--init {init} is neither a checkpoint nor an entry folder")


def cmd_prepare(args: argparse.Namespace) -> int:
    import torch

    repo = Path(args.repo).resolve()
    gpu = repo / GPU_DIR
    if gpu.exists():
        shutil.rmtree(gpu)
    (gpu / "data").mkdir(parents=True)
    train = sorted(Path(args.wallpapers).glob("*.jpg")) + [
        p for p in sorted(Path(args.photos).glob("*.png")) if p.stem < "036"
    ]
    val = [p for p in sorted(Path(args.photos).glob("*.png")) if p.stem >= "036"]
    if args.limit_images:
        train = train[: args.limit_images]
    if not train or not val:
        raise SystemExit(f"no training or validation images under {args.wallpapers} and {args.photos}")
    size = _encode_training_set(train, gpu / "data" / "train", args.data_mib * 1024 * 1024)
    _encode_training_set(val, gpu / "data" / "val", 8 * 1024 * 1024, quality=95)
    # Weights only (no optimizer state): an init checkpoint the trainer warm-starts from.
    if len(args.init) != len(args.arch) or len(set(args.arch)) != len(args.arch):
        raise SystemExit("give one --init for each --arch, and each --arch once")
    (gpu / "init").mkdir()
    for arch, init in zip(args.arch, args.init, strict=True):
        torch.save({"model": init_state(Path(init))}, gpu / "init" / f"{arch}.pt")
    widths = f"--N {args.N} --M {args.M}" if args.N and args.M else ""
    amp = "" if args.cpu else "--amp bf16 --channels-last"
    if args.compile:  # not yet tried on a GPU: the first steps pay the compilation out of the --minutes budget
        amp += " --compile"
    settings = {
        "ARCHS": " ".join(args.arch),
        "STEPS": args.steps,
        "MINUTES": args.minutes,
        "WARMUP": args.warmup,
        "EMA": args.ema,
        "BATCH": args.batch_size,
        "PATCH": args.patch,
        "LR": args.lr,
        "VAL_EVERY": args.val_every,
        "CKPT_EVERY": args.ckpt_every,
        "WORKERS": args.workers,
        "THREADS": args.threads,
        "AMP": amp,
        "WIDTHS": widths,
    }
    (gpu / "plan.env").write_text("".join(f'{k}="{v}"\n' for k, v in settings.items()))
    if args.wheels:
        (gpu / "wheels").mkdir()
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d",
             str(gpu / "wheels"), "pytorch-msssim"],
            check=True,
        )  # fmt: skip
    exclude = _exclude_file(repo)
    exclude.parent.mkdir(parents=True, exist_ok=True)
    lines = exclude.read_text().splitlines() if exclude.exists() else []
    if EXCLUDE_LINE not in lines:
        exclude.write_text("\n".join([*lines, EXCLUDE_LINE]) + "\n")
    # The shipped entries must not travel: out of the index for the duration (restored by `restore`).
    _git(repo, "rm", "-r", "-q", "--cached", "--ignore-unmatch", ENTRIES)
    files = travelling_files(repo)
    total = sum(f.stat().st_size for f in files if not f.is_relative_to(repo / ENTRIES))
    entries_untracked = [f for f in files if f.is_relative_to(repo / ENTRIES)]
    if entries_untracked:  # untracked-not-ignored entries would travel: ignore them for the duration too
        lines = exclude.read_text().splitlines()
        exclude.write_text("\n".join([*lines, f"/{ENTRIES}/"]) + "\n")
    print(f"training set: {len(train)} images, {size / 2**20:.1f} MiB; travels: {total / 2**20:.1f} MiB")
    if total > TRAVEL_LIMIT:
        raise SystemExit(f"{total / 2**20:.1f} MiB would travel, over the device tool's 64 MiB: lower --data-mib")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    repo = Path(args.repo).resolve()
    _git(repo, "reset", "-q", "--", ENTRIES, check=False)
    exclude = _exclude_file(repo)
    if exclude.exists():
        keep = [line for line in exclude.read_text().splitlines() if line not in (EXCLUDE_LINE, f"/{ENTRIES}/")]
        exclude.write_text("\n".join(keep) + ("\n" if keep else ""))
    left = _git(repo, "status", "--porcelain", "--", ENTRIES)
    print("model_store/entries is back in the index" if not left.strip() else f"check git status:\n{left}")
    return 0


def cmd_collect(args: argparse.Namespace) -> int:
    """On the device: the newest checkpoint's weights as ≤15 MiB safetensors shards, plus the run's logs."""
    import torch
    from safetensors.torch import save_file

    run, out = Path(args.run), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = run / "last.pt"
    if not ckpt_path.exists():
        print(f"no checkpoint yet in {run}")
        return 1
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in ckpt["model"].items():
        nbytes = t.numel() * t.element_size()
        if size + nbytes > SHARD_BYTES and shards[-1]:
            shards.append({})
            size = 0
        shards[-1][name] = t.contiguous()
        size += nbytes
    # the run's state and log ride in the first shard's metadata: two files per run, so that several runs'
    # weights fit in the 8 files that come back
    state = {
        "step": int(ckpt["step"]),
        "wall": float(ckpt.get("wall", 0.0)),
        "gpu_s": float(ckpt.get("gpu_s", ckpt.get("wall", 0.0))),
        "hardware": list(ckpt.get("hardware", [])),
        "config": ckpt.get("config", "{}"),
    }
    meta = {"state": json.dumps(state)}
    for name in ("log.csv", "summary.json"):
        if (run / name).exists():
            meta[name] = (run / name).read_text()
    for i, shard in enumerate(shards):
        save_file(shard, str(out / f"weights-{i}.safetensors"), metadata=meta if i == 0 else None)
    print(f"collected step {state['step']}: {len(shards)} shards into {out}")
    return 0


def cmd_assemble(args: argparse.Namespace) -> int:
    """Here: the collected files become a run folder (config.json + last.pt) that `zoo release` reads."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    fetched, run = Path(args.fetched), Path(args.run)
    shards = sorted(fetched.glob("weights-*.safetensors"), key=lambda p: int(p.stem.split("-")[1]))
    if not shards:
        raise SystemExit(f"no weights-*.safetensors in {fetched}")
    with safe_open(str(shards[0]), "pt") as f:
        meta = f.metadata() or {}
    if "state" not in meta:
        raise SystemExit(f"{shards[0]} holds no run state: not written by `gpu_train.py collect`")
    state = json.loads(meta["state"])
    model: dict[str, torch.Tensor] = {}
    for shard in shards:
        model.update(load_file(str(shard)))
    run.mkdir(parents=True, exist_ok=True)
    config = json.loads(state["config"])
    config["note"] = "trained on a lent GPU machine (scripts/gpu_train.py)"
    (run / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    ckpt = {
        "model": model,
        "step": state["step"],
        "wall": state["wall"],
        # collect runs on the GPU machine: the run's wall time there is its GPU time (one GPU)
        "gpu_s": state.get("gpu_s", state["wall"]),
        "hardware": state.get("hardware", []),
        "config": state["config"],
    }
    torch.save(ckpt, run / "last.pt")
    log = meta.get("log.csv", meta.get("log"))  # "log": what the first lent GPU's collect wrote
    if log:
        (run / "log.csv").write_text(log)
    if "summary.json" in meta:  # the run finished there: its summary (skipped steps, hardware) goes on the card
        (run / "summary.json").write_text(meta["summary.json"])
    print(f"{run}: step {state['step']}, {len(model)} tensors; release with zoo release {run} --checkpoint last.pt")
    return 0


def cmd_rehearse(args: argparse.Namespace) -> int:
    """Every step but the device call, on CPU: prepare in a clone, copy exactly what would travel into a
    sandbox, run device.sh there with OUT set, assemble what it collected, release it, restore."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        clone = tmp_path / "repo"
        subprocess.run(["git", "clone", "-q", "--shared", str(REPO), str(clone)], check=True)
        # the working tree as it is now (uncommitted scripts included), without the entries' weights
        for rel in ("scripts", "zoo", "setup.py", "pyproject.toml"):
            src = REPO / rel
            if src.is_dir():
                shutil.copytree(
                    src, clone / rel, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.so", "__pycache__")
                )
            else:
                shutil.copyfile(src, clone / rel)
        if len(args.init) != len(args.arch):
            raise SystemExit("give one --init for each --arch")
        runs = [a for pair in zip(args.arch, args.init, strict=True) for a in ("--arch", pair[0], "--init", pair[1])]
        prepare = [
            sys.executable, str(clone / "scripts" / "gpu_train.py"), "prepare", "--repo", str(clone), *runs,
            "--steps", str(args.steps), "--batch-size", "2",
            "--patch", "128", "--minutes", "0", "--val-every", str(args.steps), "--ckpt-every", "1", "--workers", "0",
            "--threads", "2", "--cpu", "--data-mib", "4", "--limit-images", str(args.images),
            "--wallpapers", args.wallpapers, "--photos", args.photos,
        ] + (["--N", str(args.N), "--M", str(args.M)] if args.N else [])  # fmt: skip
        subprocess.run(prepare, check=True)
        sandbox, out = tmp_path / "device", tmp_path / "out"
        files = travelling_files(clone)
        if any(f.is_relative_to(clone / ENTRIES) for f in files):
            raise SystemExit("the shipped entries would travel")
        for f in files:
            dest = sandbox / f.relative_to(clone)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dest)
        out.mkdir()
        env = {**os.environ, "OUT": str(out)}
        subprocess.run(["bash", "scripts/gpu/device.sh", "start", "30"], cwd=sandbox, env=env, check=True)
        # the second call on the same warm machine: each run's last checkpoint starts a new cycle at half the lr
        subprocess.run(["bash", "scripts/gpu/device.sh", "again", "30"], cwd=sandbox, env=env, check=True)
        for arch in args.arch:
            first, second = sandbox / GPU_DIR / "runs-1" / arch, sandbox / GPU_DIR / "runs" / arch
            if not (first / "summary.json").is_file():
                raise SystemExit(f"again did not keep the first cycle's run of {arch}")
            if (sandbox / GPU_DIR / "init" / f"{arch}.pt").read_bytes() != (first / "last.pt").read_bytes():
                raise SystemExit(f"again did not start {arch} from the first cycle's last checkpoint")
            lr = json.loads((second / "summary.json").read_text())["lr"]
            if abs(lr - json.loads((first / "summary.json").read_text())["lr"] / 2) > 1e-12:
                raise SystemExit(f"again ran {arch} at lr {lr}, not half the first cycle's")
        back = sorted(p for p in out.rglob("*") if p.is_file())
        deep = [p for p in back if len(p.relative_to(out).parts) > 3]
        if len(back) > MAX_FILES_BACK or deep or any(f.stat().st_size > 16 * 1024 * 1024 for f in back):
            raise SystemExit(f"what comes back breaks the device tool's limits: {back}")
        run = Path(args.run)
        for arch in args.arch:
            subprocess.run(
                [sys.executable, str(clone / "scripts" / "gpu_train.py"), "assemble", str(out / arch),
                 "--run", str(run / arch)],
                check=True,
            )  # fmt: skip
        subprocess.run(
            [sys.executable, str(clone / "scripts" / "gpu_train.py"), "restore", "--repo", str(clone)], check=True
        )
        if _git(clone, "status", "--porcelain", "--", ENTRIES).strip():
            raise SystemExit("restore left model_store/entries changed")
    print(f"rehearsal done: {run}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--repo", default=str(REPO))
    p.add_argument("--arch", action="append", required=True, help="a run's architecture (repeat: side by side)")
    p.add_argument("--init", action="append", required=True, help="its checkpoint or entry folder, in order")
    p.add_argument("--steps", type=int, default=40000, help="the run's length (the cosine schedule's)")
    p.add_argument("--minutes", type=float, default=7.0, help="a wall-clock budget the cosine follows (0: --steps)")
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--ema", type=float, default=0.998)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--patch", type=int, default=256)
    p.add_argument("--lr", type=float, default=1.5e-4)
    p.add_argument("--val-every", type=int, default=100000, help="validation steps (the last step validates anyway)")
    p.add_argument("--ckpt-every", type=int, default=250)
    p.add_argument("--workers", type=int, default=3, help="loader workers per run (16 cores, two runs)")
    p.add_argument("--threads", type=int, default=4, help="torch threads per run")
    p.add_argument("--data-mib", type=int, default=40)
    p.add_argument("--limit-images", type=int, default=0)
    p.add_argument("--wallpapers", default=str(SHARED / "wallpapers"))
    p.add_argument("--photos", default=str(SHARED / "photos"))
    p.add_argument("--N", type=int)
    p.add_argument("--M", type=int)
    p.add_argument("--cpu", action="store_true", help="no bf16 autocast (the rehearsal)")
    p.add_argument("--compile", action="store_true", help="torch.compile the training step (untried on a GPU)")
    p.add_argument("--wheels", action="store_true", help="carry pytorch-msssim, which the GPU image lacks")
    p.set_defaults(func=cmd_prepare)
    p = sub.add_parser("restore")
    p.add_argument("--repo", default=str(REPO))
    p.set_defaults(func=cmd_restore)
    p = sub.add_parser("collect")
    p.add_argument("run")
    p.add_argument("out")
    p.set_defaults(func=cmd_collect)
    p = sub.add_parser("assemble")
    p.add_argument("fetched")
    p.add_argument("--run", required=True)
    p.set_defaults(func=cmd_assemble)
    p = sub.add_parser("rehearse")
    p.add_argument("--arch", action="append", required=True)
    p.add_argument("--init", action="append", required=True)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--images", type=int, default=3)
    p.add_argument("--N", type=int)
    p.add_argument("--M", type=int)
    p.add_argument("--run", default="runs/gpu-rehearsal")
    p.add_argument("--wallpapers", default=str(SHARED / "wallpapers"))
    p.add_argument("--photos", default=str(SHARED / "photos"))
    p.set_defaults(func=cmd_rehearse)
    args = parser.parse_args(argv)
    from zoo.errors import ZooError

    try:
        return int(args.func(args))
    except ZooError as exc:  # an --init that is no entry or checkpoint, a tampered entry: one line, no traceback
        raise SystemExit(f"gpu_train.py {args.cmd}: {exc}") from None


if __name__ == "__main__":
    sys.exit(main())
