"""Image folders decoded once into uint8 arrays; crops chosen by the sampler so runs resume exactly."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from zoo.errors import InputError
from zoo.evaluation.runner import list_images


@dataclass(frozen=True)
class LoadReport:
    loaded: int
    too_small: int
    unreadable: int
    not_images: int


def load_folder(folder: str | Path | Sequence[str], min_size: int) -> tuple[list[np.ndarray], list[str], LoadReport]:
    """Decode every image once (RGB uint8) of a folder, or of a list of image files (what a recipe's data sources
    name); skip, and count, unreadable files and images under min_size."""
    from zoo.imageio import read_image, to_uint8

    if isinstance(folder, str | Path):
        paths, not_images = list_images(folder)
    else:
        paths, not_images = [Path(p) for p in folder], 0
        folder = f"the {len(paths)} listed files"
    images, names, small, bad = [], [], 0, 0
    for p in paths:
        try:
            x, _ = read_image(p)
        except InputError:
            bad += 1
            continue
        if min(x.shape[-2:]) < min_size:
            small += 1
            continue
        images.append(to_uint8(x))
        names.append(p.name)
    if not images:
        raise InputError(f"{folder} has no usable images of at least {min_size}x{min_size} pixels")
    return images, names, LoadReport(len(images), small, bad, not_images)


class CropDataset(Dataset):
    """Items are (image index, top, left, flip) tuples chosen by the sampler; returns float (3, P, P)."""

    def __init__(self, images: list[np.ndarray], patch: int):
        self.images = images
        self.patch = patch

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item: tuple[int, int, int, int]) -> tuple[torch.Tensor, int]:
        i, top, left, flip = item
        crop = self.images[i][top : top + self.patch, left : left + self.patch]
        if flip:
            crop = crop[:, ::-1]
        x = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1).float().div_(255.0)
        return x, i


def full_images(images: list[np.ndarray], multiple: int = 64, max_side: int = 512) -> list[torch.Tensor]:
    """Validation images: centre crops (at most max_side, a multiple of `multiple`) as float tensors."""
    out = []
    for a in images:
        h, w = a.shape[:2]
        ch, cw = min(h, max_side) // multiple * multiple, min(w, max_side) // multiple * multiple
        if ch == 0 or cw == 0:
            ch, cw = h, w
        top, left = (h - ch) // 2, (w - cw) // 2
        crop = a[top : top + ch, left : left + cw]
        out.append(torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1).float() / 255.0)
    return out
