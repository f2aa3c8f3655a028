"""A training run's settings: the one list of them, read by `zoo train` (its flags), recipes and the trainer.

Kept apart from the trainer so that the command line can build its flags without importing torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from zoo.errors import InputError


@dataclass
class TrainConfig:
    arch: str
    quality: float  # a variable-rate architecture trains every level: 0 (ignored)
    train_dir: str | tuple[str, ...]  # a folder, or the image files a recipe's data sources name
    val_dir: str | tuple[str, ...]
    out: str
    metric: str = "mse"
    steps: int | None = None
    epochs: int | None = None
    batch_size: int = 8
    patch: int = 256
    lr: float = 1e-4
    aux_lr: float = 1e-3
    scheduler: str = "plateau"
    val_every: int = 500
    ckpt_every: int = 200
    log_every: int = 10
    clip: float = 1.0
    workers: int = 2
    seed: int = 0
    resume: bool = False
    init: str | None = None
    init_parts: tuple[str, ...] = ()  # with init: load only these submodules (e.g. g_a, g_s of another arch)
    init_widen: bool = False  # with init: grow a narrower model of the same arch into this quality's widths
    # with init from a mean-scale model into a context model (mbt2018, mbt2018-vr): how the new context parts
    # start, "identity" (exactly the mean-scale model's predictions) or "default" (zoo.train.grow)
    init_context: str = "identity"
    # train only these submodules (the rest frozen, no backward through them): e.g. a grown context model's
    # context_prediction and entropy_parameters first, under the trained transforms, before a cycle of all
    train_only: tuple[str, ...] = ()
    entropy_lr: float | None = None  # own learning rate for the entropy bottleneck's density (fresh bottlenecks)
    context_lr: float | None = None  # own learning rate for a context model's context parts (grown ones)
    amp: str | None = None  # "bf16": bfloat16 autocast of the transforms (entropy models stay float32)
    # channels-last tensors: with bf16 on a CPU with AMX (this machine), 2.5x the steps per CPU-second
    channels_last: bool = False
    # an exponential moving average of the weights (0: off): validation, best.pt and releases use the
    # average ("model" in a checkpoint), training goes on from the raw weights ("raw")
    ema_decay: float = 0.0
    compile: bool = False
    hard_samples: bool = False
    widths: dict[str, int] = field(default_factory=dict)
    val_max_side: int = 512
    quiet: bool = False
    # variable-rate architectures: the share of examples drawn at an integer level (the rest uniformly in
    # [1, 8]), and the levels validated (a level's figures are logged as phase "val-q<level>")
    integer_share: float = 0.5
    # a wall-clock budget instead of a step count: the run stops after this many minutes of training, and
    # the cosine/poly schedules follow the elapsed share of the budget instead of the step
    max_minutes: float | None = None
    # what max_minutes counts: "wall" (the clock) or "cpu" (the training process's CPU time, all its threads:
    # a budget that a busy machine does not shrink, for comparing recipes fairly beside other work)
    budget_clock: str = "wall"
    # a budget that extends a resumed run: the minutes it has already trained (on budget_clock, read from
    # last.pt) plus these, so a cosine cycle cut off by the end of one session ends this many minutes into the
    # next; without last.pt, a fresh run of these minutes. Instead of max_minutes.
    more_minutes: float | None = None
    warmup_steps: int = 0  # linear learning-rate warm-up from 1% over this many steps
    val_levels: tuple[float, ...] = (1, 2, 3, 4, 5, 6, 7, 8)

    def total_steps(self, n_images: int) -> int:
        if self.max_minutes or self.more_minutes:
            return self.steps or 10**9  # the clock ends the run
        if self.steps:
            return self.steps
        if self.epochs:
            return self.epochs * max(1, math.ceil(n_images / self.batch_size))
        raise InputError("give --steps or --epochs")


def describe_data(source: str | tuple[str, ...] | list[str]) -> str:
    """A run's training data for its summary and card: the folder, or the listed files' folders with counts, each
    named by its last two parts ("datasets/photos (35)"): a card says what the data was, not where it lay on the
    machine that trained it."""
    if isinstance(source, str):
        return source
    folders: dict[str, int] = {}
    for f in source:
        folder = "/".join(Path(f).parent.parts[-2:])
        folders[folder] = folders.get(folder, 0) + 1
    return " + ".join(f"{folder} ({n})" for folder, n in folders.items())
