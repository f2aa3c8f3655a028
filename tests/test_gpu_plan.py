"""The lent-GPU plan (docs/gpu-training.md) rehearsed on CPU: everything but the device call."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from tests.support import PHOTOS, REPO, SHARED, need_shared


@pytest.mark.slow
def test_rehearsal_trains_collects_assembles_and_releases(tmp_path):
    import zoo
    from zoo.registry import create_model
    from zoo.train.release import release

    need_shared(PHOTOS)  # skips without the shared folder; fails under CI=true
    need_shared(SHARED / "datasets" / "wallpapers")
    archs = ("bmshj2018-hyperprior-vr", "mbt2018-mean-vr")  # two runs side by side, as on the GPU
    runs = []
    for arch in archs:
        init = tmp_path / f"{arch}.pt"
        torch.save({"model": create_model(arch, N=16, M=24).state_dict()}, init)
        runs += ["--arch", arch, "--init", str(init)]
    run = tmp_path / "run"
    cmd = [
        sys.executable, str(REPO / "scripts" / "gpu_train.py"), "rehearse", *runs, "--N", "16",
        "--M", "24", "--steps", "2", "--images", "2", "--run", str(run),
        "--wallpapers", str(SHARED / "datasets" / "wallpapers"), "--photos", str(PHOTOS),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "travels:" in proc.stdout and "model_store/entries is back in the index" in proc.stdout
    # each assembled run releases like any other, and its entry codes at a level
    for arch in archs:
        entry = tmp_path / "entry" / arch
        info = release(run / arch, "0.1", entry, checkpoint="last.pt")
        assert info.training["steps"] == 2 and info.entry.arch == arch
        codec = zoo.load_local(entry, quality=4.5)
        assert codec.entry.level == 4.5
    # the repository itself was never touched: its entries are still tracked and .gpu is not ignored
    status = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "model_store/entries"], text=True,
                            capture_output=True).stdout  # fmt: skip
    assert status.strip() == ""
