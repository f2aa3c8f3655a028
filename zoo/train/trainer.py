"""The training orchestrator: steps, validation with real bitstreams, checkpoints, resume, DDP.

Resuming is exact: the model, both optimizers, the scheduler, torch's RNG, the step and the sampler's
state are checkpointed, and every batch's crops are a function of (seed, step) alone, so DataLoader
workers prefetching ahead change nothing.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader

from zoo.errors import CompileError, DivergedError, InputError
from zoo.models.base import CompressionModel
from zoo.precision import cpu_has_fast_bf16
from zoo.registry import LAMBDAS, create_model, get_arch
from zoo.train.config import TrainConfig, describe_data
from zoo.train.data import CropDataset, full_images, load_folder
from zoo.train.losses import RateDistortionLoss
from zoo.train.malloc import allocator_notice
from zoo.train.meters import MeterGroup
from zoo.train.optim import build_optimizers, build_scheduler, grad_norm
from zoo.train.sampler import CropSampler, HardSampleSampler

MAX_NONFINITE_IN_A_ROW = 20  # skipped steps in a row before a run is declared diverged


def describe_hardware(device: torch.device, world: int = 1) -> str:
    """What a run trains on, for model cards: the GPU's name, or the CPU's model, its AMX/BF16 support and
    the threads a process uses."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} x {world}"
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    bf16 = ", AMX/AVX-512 BF16" if cpu_has_fast_bf16() else ""
    return (
        f"CPU: {name} ({os.cpu_count()} logical cores{bf16}), {torch.get_num_threads()} thread(s) x {world} process(es)"
    )


def sample_levels(seed: int, step: int, n: int, levels: int = 8, integer_share: float = 0.5) -> np.ndarray:
    """The λ ladder positions of one step's examples, a function of (seed, step) so a resumed run draws the
    same. Integer levels are the shipped operating points, so a share of examples sits exactly on them; the
    rest are uniform over [1, levels] (log-λ uniform), which trains the interpolation between them."""
    rng = np.random.default_rng([seed, step, 7])
    integer = rng.integers(1, levels + 1, n).astype(np.float64)
    continuous = rng.uniform(1.0, float(levels), n)
    return np.where(rng.random(n) < integer_share, integer, continuous)


def _dist_info() -> tuple[int, int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def load_init_weights(
    model: CompressionModel,
    spec: str,
    parts: tuple[str, ...] = (),
    widen: bool = False,
    metric: str = "mse",
    context_start: str = "identity",
    calibration: Callable[[], Tensor] | None = None,
) -> str:
    """Warm start from an entry folder, a training checkpoint, or a Hub name (hf-hub:... or arch:quality), found by
    the one resolver of model arguments (`zoo.resolve`). An entry folder that has left the working tree is read
    from the history its manifest line names (`zoo.mirror`), so a retired version stays a starting point.

    With `parts`, only those submodules are taken (each one whole, shapes equal): the way to start one
    architecture from another's transforms, e.g. a factorized prior from a hyperprior's g_a and g_s.
    With `widen`, a narrower model of the same architecture is grown into this one (`zoo.train.widen`).
    A context model started from a mean-scale model of its widths takes every shared weight and starts its
    context parts as `context_start` says (`zoo.train.grow`; `calibration` gives training crops for it)."""
    from zoo.resolve import HF_PREFIX, resolve_model

    source_lambda: float | None = None
    name, _, q = spec.partition(":")
    if spec.startswith(HF_PREFIX) or Path(spec).exists() or not q:
        name, q = spec, ""
    if q and not q.isdigit():
        raise InputError(f"--init {spec}: ARCH:QUALITY takes an integer quality, not {q!r}")
    source = resolve_model(name, quality=int(q) if q else None)
    if source.kind == "checkpoint":
        from zoo.registry import load_checkpoint

        state, ckpt = load_checkpoint(source.path)
        if isinstance(ckpt, dict) and "config" in ckpt:
            run = json.loads(ckpt["config"])
            if run.get("quality") and not get_arch(run["arch"]).variable_rate:
                source_lambda = get_arch(run["arch"]).lmbda(run["quality"], run.get("metric", "mse"))
    elif source.kind == "release":  # the model zoo.load(name, quality) runs (a variable-rate one folded)
        state = source.codec().model.state_dict()
        if q:
            source_lambda = get_arch(name).lmbda(int(q), metric)
    else:  # an entry folder or a Hub repository: the weights as stored
        from zoo.entry import load_entry

        src, info = load_entry(source.path)
        state = src.state_dict()
        source_lambda = info.lmbda
    from zoo.models.variable_rate import VariableRateMixin
    from zoo.train.grow import grow_context_model, is_mean_scale_source

    if not parts and not widen and is_mean_scale_source(model, state):
        crops = calibration() if calibration is not None and context_start == "identity" else None
        try:
            how = grow_context_model(model, state, context_start, crops)
        except ValueError as exc:
            raise InputError(f"--init {spec}: {exc}") from None
        return f"{spec} (mean-scale, grown into a context model: {how})"
    if isinstance(model, VariableRateMixin) and not widen and not parts and "y_gain.log_gain" not in state:
        return _init_variable_rate_from_fixed(model, state, spec, source_lambda, metric)
    if widen:
        from zoo.train.widen import widen_into

        widen_into(model, state)
        return f"{spec} (widened)"
    if parts:
        from zoo.entropy import TABLE_BUFFERS

        # The integer CDF tables are derived from the weights (and stale once training moves them): never taken.
        full = model.state_dict()
        own = {k: v for k, v in full.items() if k.rsplit(".", 1)[-1] not in TABLE_BUFFERS}
        for part in parts:
            if not any(k.startswith(part + ".") for k in full):
                raise InputError(f"--init-parts: this model has no submodule {part!r}")
            wanted = {k for k in own if k.startswith(part + ".")}
            missing = sorted(k for k in wanted if k not in state)
            if missing:
                raise InputError(f"--init {spec} has no {part} weights (missing {missing[0]})")
            bad = sorted(k for k in wanted if state[k].shape != own[k].shape)
            if bad:
                have, need = tuple(state[bad[0]].shape), tuple(own[bad[0]].shape)
                raise InputError(f"--init {spec}: {bad[0]} is {have}, this model needs {need}")
        state = {k: v for k, v in state.items() if k in own and any(k.startswith(p + ".") for p in parts)}
        model.load_state_dict(state, strict=False)
        return f"{spec} ({', '.join(parts)})"
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise InputError(f"--init {spec} does not fit this architecture/width: {str(exc).splitlines()[0]}") from None
    return spec


def _init_variable_rate_from_fixed(model, state: dict, spec: str, source_lambda: float | None, metric: str) -> str:
    """A variable-rate network from a fixed-rate model of its base architecture: every weight taken, and each
    level's gain started at (λ_q / λ_source)^½, so the source's own level reproduces it exactly and the others
    start at their high-rate step sizes."""
    from zoo.entropy import TABLE_BUFFERS

    if source_lambda is None or not math.isfinite(source_lambda) or source_lambda <= 0:
        raise InputError(f"--init {spec}: cannot tell the source's λ; give an entry folder or a run checkpoint")
    # The integer CDF tables are derived from the weights (and stale once training moves them): never taken.
    own = {
        k
        for k in model.state_dict()
        if not k.startswith(("y_gain.", "z_gain.")) and k.rsplit(".", 1)[-1] not in TABLE_BUFFERS
    }
    state = {k: v for k, v in state.items() if k.rsplit(".", 1)[-1] not in TABLE_BUFFERS}
    missing = sorted(k for k in own if k not in state)
    extra = sorted(set(state) - own)
    if missing or extra:
        what = f"has no {missing[0]}" if missing else f"has {extra[0]}, which this model lacks"
        raise InputError(f"--init {spec} is not the base architecture of this variable-rate model: it {what}")
    try:
        model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    except RuntimeError as exc:
        raise InputError(f"--init {spec} does not fit this model's widths: {str(exc).splitlines()[0]}") from None
    model.y_gain.init_from_lambdas(LAMBDAS[metric], source_lambda)  # type: ignore[attr-defined]
    model.z_gain.init_from_lambdas(LAMBDAS[metric], source_lambda, power=0.0)  # type: ignore[attr-defined]
    return f"{spec} (fixed-rate, λ={source_lambda:g}, gains from the λ ladder)"


def freeze_all_but(model: torch.nn.Module, parts: tuple[str, ...]) -> None:
    """Only `parts` train: every other parameter stops requiring a gradient, so no backward runs through the
    frozen transforms (a step costs little more than their forward). The entropy bottleneck's quantiles stay
    with the auxiliary loss."""
    names = {name.split(".", 1)[0] for name, _ in model.named_parameters()}
    unknown = sorted(set(parts) - names)
    if unknown:
        raise InputError(
            f"--train-only: this model has no submodule {unknown[0]!r} (it has {', '.join(sorted(names))})"
        )
    for name, param in model.named_parameters():
        if name.split(".", 1)[0] not in parts and not name.endswith("quantiles"):
            param.requires_grad_(False)


def rate_only_parts(model: torch.nn.Module, parts: tuple[str, ...]) -> bool:
    """Whether training only `parts` leaves the reconstruction constant, so that a step may skip the synthesis
    (`rate_only`, about a third of a step's CPU time): the parts are all a context model's context parts. The
    training reconstruction, g_s(y + noise), does not depend on them; its distortion adds nothing to their
    gradient. Training rows then log the rate alone (loss = bpp, no PSNR); validation still codes real files."""
    return hasattr(model, "rate_only") and bool(parts) and set(parts) <= {"context_prediction", "entropy_parameters"}


def level_lambdas(levels: torch.Tensor, metric: str) -> torch.Tensor:
    """λ per example for a tensor of levels: the standard table at integers, log-linear in between."""
    logs = torch.log(torch.tensor(LAMBDAS[metric], dtype=torch.float64, device=levels.device))
    pos = (levels.double() - 1).clamp(0, len(logs) - 1)
    low = pos.floor().long().clamp(max=len(logs) - 2)
    t = pos - low
    return torch.exp((1 - t) * logs[low] + t * logs[low + 1]).float()


def _budget_config(cfg: TrainConfig) -> TrainConfig:
    """The run's config with its budget checked: --more-minutes stands for --max-minutes in a fresh run (a resumed
    one adds what it has trained, `Trainer._extend_budget`)."""
    if cfg.budget_clock not in ("wall", "cpu"):
        raise InputError(f"budget_clock is 'wall' or 'cpu', not {cfg.budget_clock!r}")
    if cfg.more_minutes is not None:
        if cfg.max_minutes or not math.isfinite(cfg.more_minutes) or cfg.more_minutes <= 0:
            raise InputError(
                f"more_minutes is a positive number of minutes, instead of max_minutes (got {cfg.more_minutes!r}"
                f" with max_minutes {cfg.max_minutes!r})"
            )
        cfg = replace(cfg, max_minutes=cfg.more_minutes)  # a fresh run; a resumed one adds what it has trained
    return cfg


class _Step(NamedTuple):
    """What one training step measured (`aux` as a number; NaN where the step was skipped)."""

    terms: Any
    loss: float
    norm: float
    aux: float
    finite: bool


@dataclass
class _RunClock:
    """The run's clocks for this process, started from what a resumed checkpoint had already counted."""

    t_start: float
    cpu_start: float
    gpus: int
    gpu_start: float
    wall_start: float

    @classmethod
    def start(cls, trainer: Trainer) -> _RunClock:
        return cls(
            t_start=time.perf_counter() - trainer.wall,
            cpu_start=time.process_time() - trainer.cpu_s,
            gpus=trainer.world if trainer.device.type == "cuda" else 0,
            gpu_start=trainer.gpu_s,
            wall_start=trainer.wall,
        )

    def wall(self) -> float:
        return time.perf_counter() - self.t_start

    def elapsed(self, budget_clock: str) -> float:
        """What a --max-minutes budget counts: this process's CPU time, or the wall clock."""
        return time.process_time() - self.cpu_start if budget_clock == "cpu" else self.wall()

    def record(self, trainer: Trainer) -> None:
        """The run's clocks as a checkpoint records them."""
        trainer.wall = self.wall()
        trainer.cpu_s = time.process_time() - self.cpu_start
        trainer.gpu_s = self.gpu_start + self.gpus * (trainer.wall - self.wall_start)


class Trainer:
    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg = _budget_config(cfg)
        self.rank, self.world, self.local_rank = _dist_info()
        self.is_main = self.rank == 0
        self.out = Path(cfg.out)
        self.device = torch.device(f"cuda:{self.local_rank}" if torch.cuda.is_available() else "cpu")
        if self.world > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        spec = get_arch(cfg.arch)
        self.variable_rate = spec.variable_rate
        if self.variable_rate:
            self.lmbda = math.nan  # per example, from its level (`level_lambdas`)
        else:
            if not cfg.quality:
                raise InputError(f"{cfg.arch} is fixed-rate: give --quality")
            spec.check_quality(cfg.quality)
            self.lmbda = spec.lmbda(cfg.quality, cfg.metric)
        sizes = self._load_data(spec.downsample)
        self._build_model(sizes)
        self._build_optimization()
        self.step, self.best, self.wall = 0, math.inf, 0.0
        self.cpu_s = 0.0  # CPU seconds of the training process (all its threads), across resumes: core-hours
        self.gpu_s = 0.0  # GPU-seconds (wall time x GPUs) of the run's training on GPUs, across resumes
        self.hardware: list[str] = []  # every machine the run has trained on, across resumes
        self.last_levels: dict[float, dict[str, float]] = {}
        if cfg.resume and (self.out / "last.pt").exists():
            self._load_checkpoint(self.out / "last.pt")
            if cfg.more_minutes is not None:
                self._extend_budget()
        self._wrap_network()

    def _load_data(self, downsample: int) -> list[tuple[int, int]]:
        """The training crops and their sampler, and the validation images; returns the training images' sizes."""
        cfg = self.cfg
        images, self.names, self.report = load_folder(cfg.train_dir, cfg.patch)
        val_images, _, self.val_report = load_folder(cfg.val_dir, 1)
        self.val = full_images(val_images, downsample, cfg.val_max_side)
        self.dataset = CropDataset(images, cfg.patch)
        sizes = [a.shape[:2] for a in images]
        sampler_cls = HardSampleSampler if cfg.hard_samples else CropSampler
        self.sampler = sampler_cls(sizes, cfg.patch, cfg.batch_size, cfg.seed, self.rank, self.world)
        self.total = cfg.total_steps(len(images))
        return sizes

    def _build_model(self, sizes: list[tuple[int, int]]) -> None:
        """The network, seeded, its gains started from the λ ladder (variable-rate), warm-started from --init."""
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        self.model = create_model(cfg.arch, 1 if self.variable_rate else cfg.quality, **cfg.widths).to(self.device)
        if self.variable_rate:
            # From scratch every level starts at its λ's high-rate step size around the ladder's middle.
            ladder = LAMBDAS[cfg.metric]
            self.model.y_gain.init_from_lambdas(ladder, math.sqrt(ladder[0] * ladder[-1]))  # type: ignore[union-attr, operator]
        self.init_from = (
            load_init_weights(
                self.model,
                cfg.init,
                cfg.init_parts,
                cfg.init_widen,
                metric=cfg.metric,
                context_start=cfg.init_context,
                calibration=lambda: self._calibration_crops(sizes),
            )
            if cfg.init
            else None
        )
        if cfg.train_only:
            freeze_all_but(self.model, cfg.train_only)
            if rate_only_parts(self.model, cfg.train_only):
                self.model.rate_only = True  # type: ignore[assignment]  # training steps skip the synthesis
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        if cfg.amp == "bf16" and self.device.type == "cpu" and not cpu_has_fast_bf16() and self.is_main:
            print("notice: this CPU has no AMX or AVX-512 BF16: bf16 autocast runs emulated, slower than float32")
        if self.device.type == "cpu" and self.is_main and (notice := allocator_notice()):
            print(notice)

    def _build_optimization(self) -> None:
        """The moving average, the optimizers, the schedule (following the clock under a budget) and the loss."""
        cfg = self.cfg
        if not 0.0 <= cfg.ema_decay < 1.0:
            raise InputError(f"ema_decay is in [0, 1), not {cfg.ema_decay!r}")
        # the model's floating-point parameters and buffers, the very tensors training updates in place
        self._float_state = [t for t in self.model.state_dict(keep_vars=True).values() if t.is_floating_point()]
        self.ema = [t.detach().clone() for t in self._float_state] if cfg.ema_decay else None
        self.optimizer, self.aux_optimizer = build_optimizers(
            self.model, cfg.lr, cfg.aux_lr, cfg.entropy_lr, cfg.context_lr
        )
        self.elapsed = 0.0  # seconds of training so far (for a wall-clock budget)
        self.skipped = 0  # steps skipped for a non-finite loss or gradient (this process's run)
        self.bad_in_a_row = 0
        progress = self._time_progress if cfg.max_minutes else None  # reads cfg.max_minutes at each step
        self.scheduler = build_scheduler(
            cfg.scheduler, self.optimizer, self.total, progress=progress, warmup=cfg.warmup_steps
        )
        self.loss_fn = RateDistortionLoss(self.lmbda, cfg.metric)

    def _extend_budget(self) -> None:
        """--more-minutes on a resumed run: the budget becomes what it has trained plus these minutes, and the
        schedule's position (which moves back) sets the learning rate now."""
        cfg = self.cfg
        assert cfg.more_minutes is not None
        spent = self.cpu_s if cfg.budget_clock == "cpu" else self.wall
        self.cfg = cfg = replace(cfg, max_minutes=spent / 60 + cfg.more_minutes)
        self.elapsed = spent
        if isinstance(self.scheduler, LambdaLR):  # the schedule's position moves back: take its lr now
            for group, base, at in zip(
                self.optimizer.param_groups, self.scheduler.base_lrs, self.scheduler.lr_lambdas, strict=True
            ):
                group["lr"] = base * at(self.scheduler.last_epoch)
        if self.is_main and not cfg.quiet:
            print(
                f"goes on from step {self.step}: a {cfg.max_minutes:g}-minute budget "
                f"({spent / 60:.1f} trained + {cfg.more_minutes:g} more)"
            )

    def _wrap_network(self) -> None:
        """What the steps call: the model, under DDP across processes, compiled with --compile."""
        cfg = self.cfg
        self.net: torch.nn.Module = self.model
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.net = DistributedDataParallel(
                self.model,
                device_ids=[self.local_rank] if self.device.type == "cuda" else None,
                find_unused_parameters=True,  # quantiles take no part in the training forward pass
            )
        if cfg.compile and self.device.type == "cpu":
            import torch._inductor.config as inductor_config

            # compile in this process, so its CPU time is counted in cpu_s (core-hours) like the training's
            inductor_config.compile_threads = 1
        self.forward = torch.compile(self.net) if cfg.compile else self.net
        self._compiled = False

    def _calibration_crops(self, sizes: list[tuple[int, int]], batches: int = 4) -> Tensor:
        """Training crops for calibrating a start (`zoo.train.grow`), drawn apart from the training batches."""
        sampler = CropSampler(sizes, self.cfg.patch, self.cfg.batch_size, self.cfg.seed + 7919)
        items = [item for step in range(batches) for item in sampler.batch_for_step(step)]
        return torch.stack([self.dataset[item][0] for item in items]).to(self.device)

    def _forward(self, *inputs: torch.Tensor) -> Any:
        """The training forward. Under --compile the first call compiles, and a compiler that cannot (no C++
        compiler, an unsupported operation) is reported as one CompileError rather than inductor's traceback."""
        if not self.cfg.compile or self._compiled:
            return self.forward(*inputs)
        from torch._dynamo.exc import TorchDynamoException
        from torch._inductor.exc import InductorError

        try:
            out = self.forward(*inputs)
        except (TorchDynamoException, InductorError) as exc:
            first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
            raise CompileError(f"--compile: torch.compile failed ({first[:300]}); train without --compile") from None
        self._compiled = True
        return out

    def _skip_nonfinite(self, loss: float, norm: float) -> None:
        self.skipped += 1
        self.bad_in_a_row += 1
        if self.is_main and self.skipped <= 5:
            print(
                f"step {self.step + 1}: non-finite loss {loss} or gradient norm {norm}: step skipped", file=sys.stderr
            )
        if self.bad_in_a_row >= MAX_NONFINITE_IN_A_ROW:
            raise DivergedError(
                f"{self.bad_in_a_row} steps in a row had a non-finite loss or gradient (at step {self.step + 1}): "
                "the weights or the learning rate are off; the last checkpoint is untouched"
            )

    def _time_progress(self, step: int) -> int:
        """The schedule's position when the clock sets the budget: the elapsed share, on a 10,000-step scale."""
        assert self.cfg.max_minutes
        return int(10_000 * min(1.0, self.elapsed / (60 * self.cfg.max_minutes)))

    # -- checkpoints ----------------------------------------------------------------------------
    @torch.no_grad()
    def _swap_ema(self) -> None:
        """Exchange the raw weights and their moving average in place (twice restores them)."""
        assert self.ema is not None
        for live, avg in zip(self._float_state, self.ema, strict=True):
            tmp = live.detach().clone()
            live.copy_(avg)
            avg.copy_(tmp)

    def _ema_state(self) -> dict[str, Tensor]:
        self._swap_ema()
        try:
            return {k: v.clone() for k, v in self.model.state_dict().items()}
        finally:
            self._swap_ema()

    def _checkpoint(self) -> dict[str, Any]:
        weights = {"model": self._ema_state(), "raw": self.model.state_dict()} if self.ema else {}
        return {
            "model": self.model.state_dict(),
            **weights,
            "optimizer": self.optimizer.state_dict(),
            "aux_optimizer": self.aux_optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "sampler": self.sampler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "step": self.step,
            "best": self.best,
            "wall": self.wall,
            "cpu_s": self.cpu_s,
            "gpu_s": self.gpu_s,
            "hardware": self.hardware,
            "config": json.dumps(asdict(self.cfg)),
        }

    def save(self, name: str) -> None:
        if not self.is_main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = self.out / f".{name}.tmp"
        torch.save(self._checkpoint(), tmp)
        os.replace(tmp, self.out / name)  # a run cut off mid-save keeps the previous checkpoint

    def _load_checkpoint(self, path: Path) -> None:
        from zoo.registry import load_checkpoint

        state, ckpt = load_checkpoint(path)  # the one checkpoint reader: weights only, typed errors
        raw = ckpt.get("raw") if isinstance(ckpt, dict) else None
        if self.ema is not None:
            self.model.load_state_dict(state)  # the average, if the run kept one; else the weights themselves
            for avg, live in zip(self.ema, self._float_state, strict=True):
                avg.copy_(live.detach())
        self.model.load_state_dict(raw if raw is not None else state)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.aux_optimizer.load_state_dict(ckpt["aux_optimizer"])
        configured = list(getattr(self.scheduler, "base_lrs", []))
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if isinstance(self.scheduler, LambdaLR) and configured != list(self.scheduler.base_lrs):
            # a resume with another --lr (or --entropy-lr) takes it: the schedule goes on at the new scale
            old = list(self.scheduler.base_lrs)
            self.scheduler.base_lrs = configured
            for group, base, before in zip(self.optimizer.param_groups, configured, old, strict=True):
                group["initial_lr"], group["lr"] = base, group["lr"] * base / before
            if self.is_main and not self.cfg.quiet:
                print(f"resumed with learning rate {configured[0]:g} instead of {old[0]:g}")
        self.sampler.load_state_dict(ckpt["sampler"])
        torch.set_rng_state(ckpt["torch_rng"])
        self.step, self.best, self.wall = int(ckpt["step"]), float(ckpt["best"]), float(ckpt["wall"])
        self.cpu_s = float(ckpt.get("cpu_s", 0.0))
        self.gpu_s = float(ckpt.get("gpu_s", 0.0))
        self.hardware = [str(h) for h in ckpt.get("hardware", [])]

    # -- validation with real bitstreams --------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Real bitstreams at every validation level, of the moving average when the run keeps one."""
        if self.ema is not None:
            self._swap_ema()
            try:
                return self._validate()
            finally:
                self._swap_ema()
        return self._validate()

    def _validate(self) -> dict[str, float]:
        from zoo import bitstream
        from zoo.codec import Codec
        from zoo.compressed import EntryId
        from zoo.evaluation.metrics import ms_ssim_rgb, psnr_rgb
        from zoo.imageio import to_uint8

        self.model.eval()
        self.model.update(force=True)
        cfg = self.cfg
        points: list[tuple[CompressionModel, EntryId, float]] = []
        if self.variable_rate:
            spec = get_arch(cfg.arch)
            for level in cfg.val_levels:
                folded = self.model.fold(level)  # type: ignore[operator]
                points.append((folded, EntryId(cfg.arch, 0, cfg.metric, "train", level), spec.lmbda(level, cfg.metric)))
        else:
            points.append((self.model, EntryId(cfg.arch, int(cfg.quality), cfg.metric, "train"), self.lmbda))
        overall, per_level = MeterGroup(), {}
        for model, entry, lmbda in points:
            codec = Codec(model, entry, bytes(16), tile_size=0)
            meters = MeterGroup()
            for x in self.val:
                data = bitstream.dumps(codec.compress(x.to(self.device)))
                ref, rec = to_uint8(x), to_uint8(codec.decompress(bitstream.loads(data)))
                h, w = ref.shape[:2]
                mse = float(((ref.astype("float64") - rec.astype("float64")) / 255.0).__pow__(2).mean())
                bpp = 8 * len(data) / (h * w)
                sim = ms_ssim_rgb(ref, rec)
                d = lmbda * 255**2 * mse if cfg.metric == "mse" else lmbda * (1 - sim)
                meters.update(bpp=bpp, psnr=psnr_rgb(ref, rec), ms_ssim=sim, loss=d + bpp)
            averages = meters.averages()
            overall.update(1, **{k: averages[k] for k in ("bpp", "psnr", "ms_ssim", "loss")})
            if entry.level is not None:
                per_level[entry.level] = averages
        self.model.train()
        self.last_levels = per_level
        return overall.averages()

    # -- the loop -------------------------------------------------------------------------------
    def run(self) -> dict[str, float]:
        from tqdm import tqdm

        cfg = self.cfg
        self.model.train()
        self._announce_run()
        log = self._open_log()
        tb = self._tensorboard()
        loader = DataLoader(
            self.dataset,
            batch_sampler=self._batches(),
            num_workers=0 if cfg.hard_samples else cfg.workers,
            persistent_workers=False,
        )
        meters = MeterGroup()
        bar = tqdm(total=self.total, initial=self.step, disable=cfg.quiet or not self.is_main, unit="step")
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.amp == "bf16")
        last_val: dict[str, float] = {}
        clock = _RunClock.start(self)
        rng = torch.get_rng_state()
        it = iter(loader)  # worker seeding draws from torch's RNG: keep it out of the training stream
        torch.set_rng_state(rng)
        while self.step < self.total:
            x, idx = next(it)
            step = self._train_step(x, idx, autocast)
            self.step += 1
            self._spend_budget(clock)
            if step.finite:
                meters.update(
                    loss=step.loss, bpp=step.terms.bpp.item(), psnr=step.terms.psnr, aux=step.aux, grad_norm=step.norm
                )
            bar.update(1)
            self._log_train(meters, bar, log, tb)
            if self.step % cfg.val_every == 0 or self.step == self.total:
                last_val = self._validate_and_keep_best(log, tb, clock)
            if self.step % cfg.ckpt_every == 0 or self.step == self.total:
                clock.record(self)
                self.save("last.pt")
        bar.close()
        if self.world > 1:
            self._check_ranks_agree()
        if log:
            log.close()
        self._write_summary(last_val, clock.wall())
        return last_val

    def _announce_run(self) -> None:
        """The run's config.json and what the data folders held; this machine added to the run's hardware."""
        cfg = self.cfg
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
            if not cfg.quiet:
                r = self.report
                print(
                    f"train: {r.loaded} images ({r.too_small} smaller than {cfg.patch}px, {r.unreadable} "
                    f"unreadable, {r.not_images} non-image files skipped); val: {len(self.val)} images"
                )
        here = describe_hardware(self.device, self.world)
        if here not in self.hardware:
            self.hardware.append(here)

    def _train_step(self, x: Tensor, idx: Tensor, autocast: torch.autocast) -> _Step:
        """One optimizer step on a batch (skipped, gradients dropped, when its loss or gradient is not finite),
        the entropy models' auxiliary step, the moving average and the per-step schedule."""
        cfg = self.cfg
        x = x.to(self.device, non_blocking=True)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.variable_rate:
            levels = torch.from_numpy(
                sample_levels(cfg.seed + 7919 * self.rank, self.step, x.shape[0], integer_share=cfg.integer_share)
            ).to(self.device, torch.float32)
            with autocast:
                out = self._forward(x, levels)
            terms = self.loss_fn(out, x, level_lambdas(levels, cfg.metric))
        else:
            with autocast:
                out = self._forward(x)
            terms = self.loss_fn(out, x)
        self.optimizer.zero_grad(set_to_none=True)
        terms.loss.backward()
        norm = (
            float(torch.nn.utils.clip_grad_norm_(self.model.main_parameters(), cfg.clip))
            if cfg.clip
            else grad_norm(self.model.main_parameters())
        )
        loss = terms.loss.item()  # one device sync for the check and the meters
        finite = math.isfinite(norm) and math.isfinite(loss)
        if finite:
            self.optimizer.step()
            self.bad_in_a_row = 0
        else:  # one non-finite step would turn every weight into NaN: skip it, stop if it keeps happening
            self._skip_nonfinite(loss, norm)
            self.optimizer.zero_grad(set_to_none=True)
        aux = self.model.aux_loss()
        self.aux_optimizer.zero_grad(set_to_none=True)
        aux.backward()
        self.aux_optimizer.step()
        if self.ema is not None:
            with torch.no_grad():
                torch._foreach_lerp_(self.ema, [t.detach() for t in self._float_state], 1.0 - cfg.ema_decay)
        if cfg.scheduler != "plateau":
            self.scheduler.step()  # type: ignore[call-arg]
        if finite:
            self._observe(idx, terms.per_image)
        return _Step(terms, loss, norm, aux.item() if finite else math.nan, finite)

    def _spend_budget(self, clock: _RunClock) -> None:
        """Count the step against a --max-minutes budget; the step that spends it becomes the last."""
        self.elapsed = clock.elapsed(self.cfg.budget_clock)
        if self.cfg.max_minutes and self.elapsed >= 60 * self.cfg.max_minutes:
            self.total = self.step  # the budget is spent: this is the last step (validated and saved)

    def _log_train(self, meters: MeterGroup, bar: Any, log: Any, tb: Any) -> None:
        """Every log_every steps (and at the last), the training averages since the last line."""
        logged = any(m.count for m in meters.meters.values())  # none when every step since was skipped
        if (self.step % self.cfg.log_every == 0 or self.step == self.total) and logged:
            avg = meters.averages()
            bar.set_postfix(loss=f"{avg['loss']:.3f}", bpp=f"{avg['bpp']:.3f}", psnr=f"{avg['psnr']:.2f}")
            self._log(log, tb, "train", avg)
            meters.reset()

    def _validate_and_keep_best(self, log: Any, tb: Any, clock: _RunClock) -> dict[str, float]:
        """Validate, log each level and the whole, step a plateau schedule, and save best.pt on a new best."""
        values = self.validate()
        for level, per_level in self.last_levels.items():
            self._log(log, tb, f"val-q{level:g}", per_level)
        self._log(log, tb, "val", values)
        if self.cfg.scheduler == "plateau":
            self.scheduler.step(values["loss"])  # type: ignore[arg-type]
        if values["loss"] < self.best:
            self.best = values["loss"]
            clock.record(self)
            self.save("best.pt")
        return values

    def _observe(self, idx: torch.Tensor, per_image: torch.Tensor) -> None:
        """Feed per-image losses to the sampler. Under DDP every rank gets every rank's losses, so the
        hard-sample weights, and hence the global batches, stay the same on all ranks."""
        if self.world > 1 and self.cfg.hard_samples:
            import torch.distributed as dist

            mine = torch.stack([idx.double().to(self.device), per_image.detach().double()])
            parts = [torch.empty_like(mine) for _ in range(self.world)]
            dist.all_gather(parts, mine)
            both = torch.cat(parts, dim=1).cpu()
            idx, per_image = both[0].long(), both[1]
        self.sampler.observe(idx.tolist(), per_image.tolist())

    def _check_ranks_agree(self) -> None:
        """The samplers must have drawn the same global batches on every rank: compare their state."""
        import torch.distributed as dist

        state = torch.tensor(
            np.nan_to_num(np.asarray(self.sampler.state_dict().get("loss", [0.0]))), device=self.device
        )
        parts = [torch.empty_like(state) for _ in range(self.world)]
        dist.all_gather(parts, state)
        if any(not torch.equal(p, parts[0]) for p in parts):
            raise RuntimeError("hard-sample sampler state differs between ranks")

    def _batches(self):
        step = self.step
        while True:
            yield self.sampler.batch_for_step(step)
            step += 1

    def _open_log(self):
        if not self.is_main:
            return None
        path = self.out / "log.csv"
        new = not path.exists() or not self.cfg.resume
        if not new:
            # rows logged after the checkpoint we resume from are about to be trained again: drop them
            lines = path.read_text().splitlines(keepends=True)
            kept = lines[:1] + [row for row in lines[1:] if int(row.split(",", 1)[0]) <= self.step]
            if len(kept) < len(lines):
                path.write_text("".join(kept))
        f = open(path, "w" if new else "a", newline="")  # noqa: SIM115
        if new:
            f.write("step,phase,loss,bpp,psnr,ms_ssim,aux,grad_norm,lr\n")
        return f

    def _tensorboard(self):
        if not self.is_main:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            return None
        return SummaryWriter(str(self.out / "tb"))

    def _log(self, f, tb, phase: str, values: dict[str, float]) -> None:
        if not self.is_main:
            return
        lr = self.optimizer.param_groups[0]["lr"]
        if f:
            row = (
                [self.step, phase]
                + [values.get(k, "") for k in ("loss", "bpp", "psnr", "ms_ssim", "aux", "grad_norm")]
                + [lr]
            )
            csv.writer(f).writerow(row)
            f.flush()
        if tb:
            for k, v in values.items():
                tb.add_scalar(f"{phase}/{k}", v, self.step)
        if phase == "val" and not self.cfg.quiet:
            print(
                f"step {self.step}: val bpp {values['bpp']:.4f} PSNR {values['psnr']:.2f} dB "
                f"MS-SSIM {values.get('ms_ssim', math.nan):.4f} loss {values['loss']:.4f}"
            )

    def _write_summary(self, val: dict[str, float], seconds: float) -> None:
        if not self.is_main:
            return
        summary = {
            "dataset": describe_data(self.cfg.train_dir),
            "images": self.report.loaded,
            "steps": self.step,
            "batch_size": self.cfg.batch_size,
            "patch": self.cfg.patch,
            "lr": self.cfg.lr,
            "processes": self.world,
            "hardware": "; ".join(self.hardware),
            "wall_time_s": round(seconds, 1),
            "cpu_hours": round(self.cpu_s / 3600, 3),
            **({"gpu_minutes": round(self.gpu_s / 60, 2)} if self.gpu_s else {}),
            "init": self.init_from,
            "amp": self.cfg.amp or "off",
            "hard_samples": self.cfg.hard_samples,
            "skipped_steps": self.skipped,
            "final_val": val,
        }
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def train(cfg: TrainConfig) -> dict[str, float]:
    trainer = Trainer(cfg)
    finished = False
    try:
        result = trainer.run()
        finished = True
        return result
    finally:
        if trainer.world > 1:
            _leave_process_group(trainer, together=finished)


def _leave_process_group(trainer: Trainer, together: bool) -> None:
    """End a DDP run's communication in order. After a finished run every rank first meets the others, so none tears
    down its connections while another is still inside the last collective or writing the summary; the group is
    then destroyed, and the DDP wrapper (whose reducer holds the group and its worker threads) is released and
    collected here, while the interpreter is whole, not whenever the process happens to exit. After an error there
    is no meeting: the other ranks may be gone, and a barrier would wait for them until its timeout."""
    import gc

    import torch.distributed as dist

    if not dist.is_initialized():
        return
    if together:
        dist.barrier()
    dist.destroy_process_group()
    trainer.net = trainer.forward = trainer.model
    gc.collect()
