"""Batch samplers whose whole state is a few numbers, so a resumed run draws the same crops.

`CropSampler` draws images uniformly; `HardSampleSampler` draws them in proportion to a running mean of
their rate–distortion loss (hard images more often), with a floor so none is forgotten. Under
DistributedDataParallel each rank draws the same global batch and keeps its own slice.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class CropSampler:
    def __init__(
        self,
        sizes: list[tuple[int, int]],
        patch: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if batch_size % world_size:
            raise ValueError(f"batch size {batch_size} is not divisible by {world_size} processes")
        self.sizes, self.patch, self.batch_size = sizes, patch, batch_size
        self.rank, self.world_size = rank, world_size
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    def pick_images(self, n: int) -> np.ndarray:
        return self.rng.integers(0, len(self.sizes), n)

    def batch_for_step(self, step: int) -> list[tuple[int, int, int, int]]:
        """This rank's crops for a step: a function of (seed, step) and, for hard samples, the loss stats."""
        self.rng = np.random.default_rng([self.seed, step])
        idx = self.pick_images(self.batch_size)
        items = []
        for i in idx.tolist():
            h, w = self.sizes[i]
            top = int(self.rng.integers(0, h - self.patch + 1))
            left = int(self.rng.integers(0, w - self.patch + 1))
            items.append((i, top, left, int(self.rng.integers(0, 2))))
        per_rank = self.batch_size // self.world_size
        return items[self.rank * per_rank : (self.rank + 1) * per_rank]

    def observe(self, image_indexes: list[int], losses: list[float]) -> None:
        """Per-image losses of the last batch (used by the hard-sample sampler)."""

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed = int(state["seed"])


class HardSampleSampler(CropSampler):
    def __init__(self, *args: Any, momentum: float = 0.9, floor: float = 0.25, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.momentum, self.floor = momentum, floor
        self.loss = np.full(len(self.sizes), np.nan)

    def weights(self) -> np.ndarray:
        known = np.isfinite(self.loss)
        mean = float(np.nanmean(self.loss)) if known.any() else 1.0
        loss = np.where(known, self.loss, mean)
        w = loss / loss.mean()
        w = (1 - self.floor) * w + self.floor  # every image keeps at least `floor` of a uniform share
        return w / w.sum()

    def pick_images(self, n: int) -> np.ndarray:
        return self.rng.choice(len(self.sizes), size=n, p=self.weights())

    def observe(self, image_indexes: list[int], losses: list[float]) -> None:
        for i, value in zip(image_indexes, losses, strict=True):
            old = self.loss[i]
            self.loss[i] = value if not np.isfinite(old) else self.momentum * old + (1 - self.momentum) * value

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "loss": self.loss.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.loss = np.asarray(state["loss"], dtype=np.float64)
