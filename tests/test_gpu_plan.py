"""The lent-GPU plan (docs/gpu-training.md) rehearsed on CPU: everything but the device call."""

from __future__ import annotations

import shutil
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


def test_an_entry_travels_as_stored_with_its_constants_exact(tmp_path):
    """The init a GPU run starts from is the entry's tensors as stored: its fp16 weights stay fp16, its
    single-element constants stay float32. Rounding every tensor to fp16 (the first lent GPU's init) turned the
    likelihood bound 1e-9 into 0, and the runs' rates into log(0)."""
    import importlib.util

    from safetensors.torch import load_file, save_file

    from zoo.entry import save_entry
    from zoo.registry import create_model

    spec = importlib.util.spec_from_file_location("gpu_train", REPO / "scripts" / "gpu_train.py")
    gpu_train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_train)
    model = create_model("bmshj2018-hyperprior-vr", N=16, M=24)
    entry = tmp_path / "entry"
    save_entry(model, entry, arch="bmshj2018-hyperprior-vr", quality=0, version="0.1", half=True)
    state = gpu_train.init_state(entry)
    stored = load_file(str(entry / "model.safetensors"))
    assert state.keys() == stored.keys()
    assert all(v.dtype == stored[k].dtype and torch.equal(v, stored[k]) for k, v in state.items())
    bound = state["gaussian_conditional.likelihood_lower_bound.bound"]
    assert bound.dtype == torch.float32 and bound.item() == pytest.approx(1e-9)
    assert state["g_a.0.weight"].dtype == torch.float16
    # a tampered entry does not travel; a checkpoint's model does, through the one checkpoint reader
    from zoo.errors import IntegrityError

    tampered = tmp_path / "tampered"
    shutil.copytree(entry, tampered)
    stored["g_a.0.weight"] = stored["g_a.0.weight"] + 1
    save_file(stored, str(tampered / "model.safetensors"), metadata={"architecture": "bmshj2018-hyperprior-vr"})
    with pytest.raises(IntegrityError, match="fingerprint"):
        gpu_train.init_state(tampered)
    torch.save({"model": model.state_dict(), "step": 3}, tmp_path / "last.pt")
    from_ckpt = gpu_train.init_state(tmp_path / "last.pt")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in from_ckpt.items())
    # and the trainer starts from it with the architecture's constants
    fresh = create_model("bmshj2018-hyperprior-vr", N=16, M=24)
    fresh.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    assert fresh.gaussian_conditional.likelihood_lower_bound.bound.item() == pytest.approx(1e-9)
