"""Training: the loss goes down, resume is exact, DDP on gloo runs, and a release loads and codes."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.support import REPO, photo_path
from zoo.procs import free_port
from zoo.train.trainer import TrainConfig, train

SMALL = {"N": 16, "M": 24}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    (root / "train").mkdir()
    (root / "val").mkdir()
    for name in ("001.png", "002.png"):
        shutil.copy(photo_path(name), root / "train" / name)
    (root / "train" / "broken.png").write_bytes(b"\x89PNG not really")
    from PIL import Image

    Image.new("RGB", (20, 20)).save(root / "train" / "tiny.png")  # smaller than the patch: skipped
    Image.open(photo_path("003.png")).crop((0, 0, 192, 128)).save(root / "val" / "v.png")
    return root


def _cfg(folders, out, steps, **kw) -> TrainConfig:
    base = dict(
        arch="bmshj2018-hyperprior",
        quality=3,
        train_dir=str(folders / "train"),
        val_dir=str(folders / "val"),
        out=str(out),
        steps=steps,
        batch_size=4,
        patch=64,
        lr=1e-3,
        val_every=1000,
        ckpt_every=5,
        workers=0,
        widths=SMALL,
        quiet=True,
        seed=3,
    )
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def _rows(out, phase="train"):
    with open(out / "log.csv") as f:
        return [r for r in csv.DictReader(f) if r["phase"] == phase]


def test_forty_steps_lower_the_loss(folders, tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "run"
    val = train(_cfg(folders, out, 40, val_every=40))
    rows = _rows(out)
    first, last = float(rows[0]["loss"]), float(rows[-1]["loss"])
    assert last < first * 0.8, (first, last)
    assert val["bpp"] > 0 and val["psnr"] > 0
    assert (out / "best.pt").exists() and (out / "last.pt").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 2 and summary["steps"] == 40


def test_training_only_the_context_parts_logs_the_rate_and_still_validates_real_files(folders, tmp_path):
    import math

    torch.set_num_threads(1)
    out = tmp_path / "run"
    parts = ("context_prediction", "entropy_parameters")
    val = train(_cfg(folders, out, 10, arch="mbt2018", val_every=10, log_every=5, train_only=parts))
    rows = _rows(out)
    assert rows and all(math.isnan(float(r["psnr"])) and float(r["loss"]) == float(r["bpp"]) for r in rows)
    assert val["psnr"] > 0 and val["bpp"] > 0  # validation codes and decodes real files as ever


def test_resume_is_exact(folders, tmp_path):
    torch.set_num_threads(1)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(_cfg(folders, straight, 20, workers=1))
    train(_cfg(folders, resumed, 10, workers=1))
    with open(resumed / "log.csv", "a") as f:  # what a run killed after its last checkpoint leaves behind
        f.write("13,train,9,9,9,,9,9,0.001\n")
    train(_cfg(folders, resumed, 20, workers=1, resume=True))
    assert [r["step"] for r in _rows(resumed)] == [r["step"] for r in _rows(straight)]
    a = torch.load(straight / "last.pt", weights_only=True)["model"]
    b = torch.load(resumed / "last.pt", weights_only=True)["model"]
    for k, v in a.items():
        if v.is_floating_point():
            assert torch.allclose(v, b[k], atol=1e-6, rtol=0), k


def test_the_allocator_is_told_from_the_mapped_libraries(folders, tmp_path, capsys):
    """malloc_library reads /proc/self/maps: the C library's malloc is "", a preloaded tcmalloc is "tcmalloc"
    (where one is installed); a CPU run without a caching allocator says how to get one, a run with it does not."""
    from zoo.train.malloc import allocator_notice, installed_tcmalloc, malloc_library
    from zoo.train.trainer import Trainer

    if not Path("/proc/self/maps").exists():
        pytest.skip("no /proc: the allocator cannot be told")
    maps = tmp_path / "maps"
    maps.write_text("7f00-7f01 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n")
    assert malloc_library(maps) == ""
    maps.write_text("7f00-7f01 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4.5.10\n")
    assert malloc_library(maps) == "tcmalloc"
    assert malloc_library(tmp_path / "absent") == ""

    probe = (
        "from zoo.train.malloc import malloc_library, allocator_notice; "
        "print(repr(malloc_library()), bool(allocator_notice()))"
    )
    plain = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env={**os.environ, "LD_PRELOAD": ""}
    )
    assert plain.stdout.split() == ["''", "True"], plain.stderr
    lib = installed_tcmalloc()
    found = subprocess.run([sys.executable, "-m", "zoo.train.malloc"], capture_output=True, text=True, check=True)
    assert found.stdout.strip() == (str(lib) if lib else "")  # what the training scripts preload
    if lib is not None:
        env = {**os.environ, "LD_PRELOAD": str(lib)}
        preloaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env)
        assert preloaded.stdout.split() == ["'tcmalloc'", "False"], preloaded.stderr

    if malloc_library() == "":  # this process: the notice names the library to preload, or the package to install
        capsys.readouterr()
        Trainer(_cfg(folders, tmp_path / "notice", 1))
        notice = [line for line in capsys.readouterr().out.splitlines() if "malloc" in line]
        assert notice == [allocator_notice()] and (str(lib) if lib else "libtcmalloc-minimal4") in notice[0]


def test_a_cpu_budget_counts_the_process_cpu_time(folders, tmp_path):
    """--max-minutes with --budget-clock cpu: the run ends once its own process has used the budget, however
    long the wall clock took, and the budget is recorded in the checkpoint's CPU seconds."""
    import time

    from zoo.errors import InputError
    from zoo.train.trainer import Trainer

    torch.set_num_threads(1)
    out = tmp_path / "budget"
    t0 = time.process_time()
    train(_cfg(folders, out, None, max_minutes=0.05, budget_clock="cpu", val_every=10**6))
    used = time.process_time() - t0
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert 3.0 <= ckpt["cpu_s"] <= used and 0 < ckpt["step"] < 10**9
    assert len(ckpt["hardware"]) == 1 and ckpt["hardware"][0].startswith("CPU: ")  # for the model card
    with pytest.raises(InputError, match="budget_clock"):
        Trainer(_cfg(folders, tmp_path / "x", 5, budget_clock="gpu"))


def test_resume_with_another_learning_rate_takes_it(folders, tmp_path):
    """A recipe change mid-run: resuming with a new --lr continues the schedule at the new scale."""
    torch.set_num_threads(1)
    out = tmp_path / "lr"
    train(_cfg(folders, out, 6, scheduler="cosine", lr=1e-3))
    before = torch.load(out / "last.pt", weights_only=True)["optimizer"]["param_groups"][0]["lr"]
    from zoo.train.trainer import Trainer

    resumed = Trainer(_cfg(folders, out, 6, scheduler="cosine", lr=3e-3, resume=True))
    assert resumed.step == 6 and resumed.scheduler.base_lrs == [3e-3]
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(3 * before)
    assert Trainer(_cfg(folders, out, 6, scheduler="cosine", lr=1e-3, resume=True)).optimizer.param_groups[0][
        "lr"
    ] == pytest.approx(before)


def test_more_minutes_extends_a_cut_off_cosine_cycle(folders, tmp_path):
    """--more-minutes: a run cut off mid-cycle goes on with a budget of the minutes it has trained plus these,
    its cosine moved back to that position (a higher learning rate, at once), and it trains until the new budget
    is spent; without last.pt it is a fresh run of these minutes; with --max-minutes, or not positive, an error."""
    import math

    from zoo.errors import InputError
    from zoo.train.trainer import Trainer

    torch.set_num_threads(1)
    out = tmp_path / "cycle"
    kw = dict(scheduler="cosine", budget_clock="cpu", val_every=10**6, ckpt_every=1)
    fresh = Trainer(_cfg(folders, out, None, more_minutes=0.04, resume=True, **kw))
    assert fresh.step == 0 and fresh.cfg.max_minutes == 0.04
    fresh.run()
    first = torch.load(out / "last.pt", weights_only=True)
    spent = first["cpu_s"] / 60
    assert spent >= 0.04 and first["optimizer"]["param_groups"][0]["lr"] < 1e-3 * 0.2  # the cycle had ended

    resumed = Trainer(_cfg(folders, out, None, more_minutes=0.04, resume=True, **kw))
    assert resumed.step == first["step"]
    assert resumed.cfg.max_minutes == pytest.approx(spent + 0.04, abs=0.01)
    position = spent / resumed.cfg.max_minutes  # the share of the new budget already trained
    expected = 1e-3 * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * position)))
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(expected, rel=0.02)
    resumed.run()
    second = torch.load(out / "last.pt", weights_only=True)
    assert second["step"] > first["step"] and second["cpu_s"] / 60 >= spent + 0.04
    assert json.loads((out / "config.json").read_text())["max_minutes"] == resumed.cfg.max_minutes

    for bad in (dict(more_minutes=0.0), dict(more_minutes=-1.0), dict(more_minutes=1.0, max_minutes=5.0)):
        with pytest.raises(InputError, match="more_minutes"):
            Trainer(_cfg(folders, tmp_path / "bad", None, **bad))

    from zoo.cli import main

    base = ["train", "--arch", "bmshj2018-hyperprior", "--quality", "3", "--train", str(folders / "train")]
    base += ["--val", str(folders / "val"), "--out", str(tmp_path / "cli")]
    assert main([*base, "--more-minutes", "0"]) == 2  # the flag reaches the config: a typed error, one line
    with pytest.raises(SystemExit) as exit_info:  # argparse: a budget is either --max-minutes or --more-minutes
        main([*base, "--max-minutes", "1", "--more-minutes", "1"])
    assert exit_info.value.code == 2


def test_hard_sample_mode_and_warm_start(folders, tmp_path):
    torch.set_num_threads(1)
    first = tmp_path / "a"
    train(_cfg(folders, first, 5))
    second = tmp_path / "b"
    train(_cfg(folders, second, 5, quality=4, init=str(first / "last.pt"), hard_samples=True))
    ckpt = torch.load(second / "last.pt", weights_only=True)
    assert ckpt["step"] == 5 and len(ckpt["sampler"]["loss"]) == 2


def test_warm_start_across_architectures_takes_only_the_named_parts(folders, tmp_path):
    from zoo.errors import InputError
    from zoo.registry import create_model
    from zoo.train.trainer import load_init_weights

    torch.manual_seed(0)
    source = create_model("bmshj2018-hyperprior", **SMALL)
    ckpt = tmp_path / "hp.pt"
    torch.save({"model": source.state_dict()}, ckpt)
    target = create_model("bmshj2018-factorized", **SMALL)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(InputError, match="does not fit"):
        load_init_weights(target, str(ckpt))  # whole-model loading stays strict
    assert load_init_weights(target, str(ckpt), ("g_a", "g_s")) == f"{ckpt} (g_a, g_s)"
    for k, v in target.state_dict().items():
        if k.startswith(("g_a.", "g_s.")):
            assert torch.equal(v, source.state_dict()[k]), k
        else:
            assert torch.equal(v, before[k]), k  # the factorized entropy bottleneck is untouched
    with pytest.raises(InputError, match="no submodule 'h_a'"):
        load_init_weights(target, str(ckpt), ("h_a",))
    with pytest.raises(InputError, match="this model needs"):
        load_init_weights(create_model("bmshj2018-factorized", N=16, M=32), str(ckpt), ("g_a",))


def test_warm_start_takes_an_updated_entropy_bottleneck_without_its_tables(tmp_path):
    """A released model carries integer CDF tables; taking its z prior into a fresh model of another arch
    copies the density's parameters and leaves the (derived, soon stale) tables empty."""
    from zoo.registry import create_model
    from zoo.train.trainer import load_init_weights

    torch.manual_seed(0)
    source = create_model("bmshj2018-hyperprior", **SMALL)
    source.update(force=True)
    assert source.entropy_bottleneck._quantized_cdf.numel() > 0
    ckpt = tmp_path / "hp.pt"
    torch.save({"model": source.state_dict()}, ckpt)
    target = create_model("mbt2018-mean", **SMALL)
    load_init_weights(target, str(ckpt), ("g_a", "h_a", "entropy_bottleneck"))
    state = target.state_dict()
    for k, v in source.state_dict().items():
        if k.startswith(("g_a.", "h_a.", "entropy_bottleneck.")) and not k.rsplit(".", 1)[-1].startswith("_"):
            assert torch.equal(state[k], v), k
    assert target.entropy_bottleneck._quantized_cdf.numel() == 0


@pytest.mark.parametrize("arch", ["bmshj2018-hyperprior", "bmshj2018-factorized"])
def test_widening_keeps_what_the_narrow_model_computes(arch, tmp_path):
    from zoo.registry import create_model
    from zoo.train.trainer import load_init_weights

    torch.manual_seed(1)
    small = create_model(arch, N=8, M=12)
    with torch.no_grad():
        for p in small.parameters():  # off the init values, so a wrong copy would show
            p.add_(0.02 * torch.randn_like(p))
    ckpt = tmp_path / "small.pt"
    torch.save({"model": small.state_dict()}, ckpt)
    big = create_model(arch, N=12, M=20)
    assert load_init_weights(big, str(ckpt), widen=True).endswith("(widened)")
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        y_small, y_big = small.g_a(x), big.g_a(x)
        assert torch.allclose(y_big[:, :12], y_small, atol=1e-6)
        assert torch.allclose(big.g_s(y_big), small.g_s(y_small), atol=1e-6)  # new channels are not read
        if arch == "bmshj2018-hyperprior":
            s_small, s_big = small.h_s(small.h_a(y_small.abs())), big.h_s(big.h_a(y_big.abs()))
            assert torch.allclose(s_big[:, :12], s_small, atol=1e-6)
    big.train()
    out = big(torch.rand(2, 3, 64, 64))
    (out.x_hat.square().mean() + sum(v.log().sum() for v in out.likelihoods.values())).backward()
    assert big.g_a[0].weight.grad[12:].abs().sum() > 0 or big.g_a[-1].weight.grad[12:].abs().sum() > 0


def test_widening_refuses_mean_scale_models(tmp_path):
    from zoo.errors import InputError
    from zoo.registry import create_model
    from zoo.train.widen import widen_into

    with pytest.raises(InputError, match="not MeanScaleHyperprior"):
        widen_into(create_model("mbt2018-mean", N=12, M=20), create_model("mbt2018-mean", N=8, M=12).state_dict())


def test_entropy_lr_gives_the_bottleneck_density_its_own_group():
    from zoo.registry import create_model
    from zoo.train.optim import build_optimizers

    model = create_model("bmshj2018-factorized", **SMALL)
    main, aux = build_optimizers(model, 1e-4, entropy_lr=5e-3)
    rest, density = main.param_groups
    assert rest["lr"] == 1e-4 and density["lr"] == 5e-3
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].startswith("entropy_bottleneck.") for p in density["params"])
    grouped = [id(p) for g in main.param_groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.main_parameters())  # each exactly once
    assert [names[id(p)] for p in aux.param_groups[0]["params"]] == ["entropy_bottleneck.quantiles"]


@pytest.mark.slow
def test_ddp_gloo_two_processes(folders, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        str(free_port()),
        "-m",
        "zoo.train",
        "--arch",
        "bmshj2018-hyperprior",
        "--quality",
        "3",
        "--N",
        "16",
        "--M",
        "24",
        "--train",
        str(folders / "train"),
        "--val",
        str(folders / "val"),
        "--out",
        str(out),
        "--steps",
        "6",
        "--patch",
        "64",
        "--batch-size",
        "4",
        "--workers",
        "0",
        "--quiet",
        "--val-every",
        "6",
        "--hard-samples",  # ranks share their losses, so their samplers stay identical (checked at the end)
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, _workers_own_words(proc.stderr)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 6


def _workers_own_words(stderr: str) -> str:
    """What a failed torchrun's workers printed themselves (an abort's reason comes before the launcher's traceback,
    which alone would fill a short tail), then the launcher's line naming the rank and its exit code."""
    cut = stderr.find("failed (exitcode")
    if cut < 0:
        return stderr[-3000:]
    start = stderr.rfind("\n", 0, cut) + 1
    return stderr[:start][-3000:] + "\n[launcher] " + stderr[start : stderr.find("\n", cut)]


def test_release_loads_and_round_trips(folders, tmp_path):
    import zoo
    from zoo.cli import main

    run = tmp_path / "run"
    train(_cfg(folders, run, 10, val_every=10))
    entry = tmp_path / "entry"
    assert (
        main(["release", str(run), "--version", "0.1", "--out", str(entry), "--eval", str(folders / "val"), "--half"])
        == 0
    )
    config = json.loads((entry / "config.json").read_text())
    assert config["weights_dtype"] == "float16" and config["results"]["kodak"]["bpp"] > 0
    # fp16 storage is measured against the fp32 weights on the same images, and costs almost nothing
    assert abs(config["training"]["fp16_psnr_loss_db"]) < 0.1
    assert config["training"]["hardware"].startswith("CPU: ") and config["training"]["steps"] == 10
    card = (entry / "README.md").read_text()
    assert "model-index" in card and "- hardware: CPU: " in card and "- cpu_hours: " in card
    training = config["training"]
    assert training["lineage_cpu_hours"] == 0 and training["total_cpu_hours"] == training["cpu_hours"]  # fresh
    assert training["compile"] is False and "- compile: False" in card
    codec = zoo.load_local(entry)
    x = torch.rand(3, 40, 70)
    assert codec.decompress(codec.compress(x)).shape == (1, 3, 40, 70)


def test_release_counts_the_core_hours_behind_a_warm_start(folders, tmp_path, capsys):
    """A run warm-started from an entry: its card's total is the entry's recorded total plus the run's own
    CPU time (or an explicit --lineage-cpu-hours, for entries released before totals were recorded)."""
    from zoo.cli import main

    first, entry = tmp_path / "first", tmp_path / "entry"
    train(_cfg(folders, first, 3))
    assert main(["release", str(first), "--version", "0.1", "--out", str(entry), "--checkpoint", "last.pt"]) == 0
    before = json.loads((entry / "config.json").read_text())["training"]["total_cpu_hours"]
    assert "datasets:" not in (entry / "README.md").read_text()  # no --dataset-name: the run's folder is no dataset
    second = tmp_path / "second"
    train(_cfg(folders, second, 3, init=str(entry)))
    for extra, lineage in (([], before), (["--lineage-cpu-hours", "2.5"], 2.5)):
        out = tmp_path / f"entry-{lineage}"
        argv = ["release", str(second), "--version", "0.2", "--out", str(out), "--checkpoint", "last.pt", *extra]
        assert main(argv) == 0
        training = json.loads((out / "config.json").read_text())["training"]
        assert training["lineage_cpu_hours"] == round(lineage, 3)
        assert training["total_cpu_hours"] == round(lineage + training["cpu_hours"], 3)
    with pytest.raises(SystemExit) as exit_info:
        main(["release", str(second), "--version", "0.3", "--out", str(tmp_path / "x"), "--lineage-cpu-hours", "-1"])
    assert exit_info.value.code == 2 and "non-negative" in capsys.readouterr().err


def test_release_counts_the_gpu_minutes_behind_an_entry(folders, tmp_path):
    """GPU time is recorded beside the core-hours, only where a GPU took part: a run's own (its checkpoint's
    gpu_s), what its warm start had behind it (given, or read from the --init entry's card), and the total."""
    from zoo.cli import main

    cpu_run, entry = tmp_path / "cpu", tmp_path / "entry"
    train(_cfg(folders, cpu_run, 3))
    assert main(["release", str(cpu_run), "--version", "0.1", "--out", str(entry), "--checkpoint", "last.pt"]) == 0
    assert not any("gpu" in k for k in json.loads((entry / "config.json").read_text())["training"])
    ckpt = torch.load(cpu_run / "last.pt", weights_only=True)
    assert ckpt["gpu_s"] == 0.0  # trained on the CPU
    ckpt["gpu_s"] = 90.0  # as a run on a GPU records it: wall seconds x GPUs
    torch.save(ckpt, cpu_run / "last.pt")
    gpu_entry = tmp_path / "gpu-entry"
    argv = ["release", str(cpu_run), "--version", "0.2", "--out", str(gpu_entry), "--checkpoint", "last.pt"]
    assert main([*argv, "--lineage-gpu-minutes", "5.8"]) == 0
    training = json.loads((gpu_entry / "config.json").read_text())["training"]
    assert (training["gpu_minutes"], training["lineage_gpu_minutes"], training["total_gpu_minutes"]) == (1.5, 5.8, 7.3)
    second = tmp_path / "second"  # a CPU run from that entry inherits its total
    train(_cfg(folders, second, 3, init=str(gpu_entry)))
    out = tmp_path / "third"
    assert main(["release", str(second), "--version", "0.3", "--out", str(out), "--checkpoint", "last.pt"]) == 0
    training = json.loads((out / "config.json").read_text())["training"]
    assert "gpu_minutes" not in training and training["total_gpu_minutes"] == 7.3


def test_entropy_models_stay_float32_under_bf16_autocast():
    """Inside a bfloat16 autocast the likelihoods are computed in float32 from the (upcast) inputs: the same
    values as outside it, where bfloat16 arithmetic would round nearby CDF differences away."""
    from zoo.entropy import EntropyBottleneck, GaussianConditional

    torch.manual_seed(0)
    eb, gc = EntropyBottleneck(8).eval(), GaussianConditional(None).eval()
    z = (torch.randn(2, 8, 6, 6) * 3).bfloat16()
    y, scales, means = (torch.randn(2, 8, 6, 6) * 4).bfloat16(), torch.rand(2, 8, 6, 6).bfloat16() + 0.2, None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z_hat, z_lik = eb(z)
        y_hat, y_lik = gc(y, scales, means=means)
    assert z_lik.dtype == y_lik.dtype == z_hat.dtype == torch.float32
    ref_z = eb(z.float())[1]
    ref_y = gc(y.float(), scales.float())[1]
    assert torch.equal(z_lik, ref_z) and torch.equal(y_lik, ref_y)


def test_float32_islands_under_bf16_autocast():
    """The convolutions that read and write pixels compute in float32 inside a bfloat16 autocast (the same
    values as outside it), GDN in float32 except its channel mixing (bfloat16 operands), while the
    convolutions between them run in bfloat16."""
    import torch.nn.functional as F

    from zoo.layers import GDN, pixel_conv, pixel_deconv

    torch.manual_seed(0)
    x = torch.rand(1, 3, 32, 32)
    first, gdn, middle, last = pixel_conv(3, 8), GDN(8), torch.nn.Conv2d(8, 8, 3, padding=1), pixel_deconv(8, 3)
    with torch.no_grad():
        gdn.gamma.add_(0.05 * torch.rand_like(gdn.gamma))  # channels that mix
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a = first(x)
        b = gdn(a)
        c = middle(b)
        d = last(c)
    assert a.dtype == b.dtype == d.dtype == torch.float32 and c.dtype == torch.bfloat16
    assert torch.equal(a, first(x)) and torch.equal(d, last(c.float()))
    beta, gamma = gdn.effective_params()
    mixing = F.conv2d((a * a).bfloat16(), gamma.bfloat16()).float()
    assert torch.equal(b, a * torch.rsqrt(mixing + beta.reshape(1, -1, 1, 1)))
    assert torch.allclose(b, gdn(a), rtol=1e-2, atol=1e-4)  # float32's GDN, to bfloat16's precision


def test_bf16_training_gradient_follows_float32(tmp_path):
    """The point of the float32 islands: on a trained hyperprior and a real photo, the bfloat16 step's
    gradient of the transforms points where float32's does (with every layer in bfloat16 it did not).

    Pinned to hyperprior-vr v1.4 (read from git history once retired), the weights the bounds were measured on:
    the test checks the islands, not how far training has got. Newer weights drift (docs/history.md)."""
    import zoo.layers as layers
    from zoo.entry import load_entry
    from zoo.imageio import read_image
    from zoo.train.losses import RateDistortionLoss

    torch.set_num_threads(1)
    from zoo.hub import EntryNotFound, load_manifest
    from zoo.mirror import _git_root, entry_folder, read_from_history
    from zoo.train.trainer import level_lambdas

    pinned = next(e for e in load_manifest() if e.name == "bmshj2018-hyperprior-vr@1.4")
    folder = REPO / pinned.path
    if not folder.is_dir():
        try:
            folder = read_from_history(pinned, _git_root(REPO), tmp_path / "v1.4")
        except EntryNotFound as exc:
            pytest.skip(f"this clone holds {pinned.name} neither in its working tree nor in its history: {exc}")
    model, info = load_entry(entry_folder(folder))
    model = model.float().train()
    img, _ = read_image(REPO / "samples/kodim23.png")
    x = torch.stack([img[:, :128, :128], img[:, 300:428, 500:628]])
    levels = torch.tensor([6.0, 8.0])  # high rates: small residuals, where rounding shows most
    loss_fn = RateDistortionLoss(float("nan"), "mse")
    watched = [p for n, p in model.named_parameters() if n.startswith(("g_a.", "g_s."))]

    def gradient(amp: bool) -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        torch.manual_seed(0)  # the same quantisation noise each time
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out = model(x, levels)
        loss_fn(out, x, level_lambdas(levels, "mse")).loss.backward()
        return torch.cat([p.grad.flatten().double() for p in watched])

    def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
        return torch.nn.functional.cosine_similarity(a, b, dim=0).item()

    reference = gradient(False)
    islands = cosine(gradient(True), reference)
    kept = {cls: cls.forward for cls in (layers.GDN, layers.PixelConv2d, layers.PixelConvTranspose2d)}
    bf16 = {layers.GDN: layers.GDN._forward} | {
        cls: forward.__wrapped__  # type: ignore[attr-defined]
        for cls, forward in kept.items()
        if cls is not layers.GDN
    }
    try:
        for cls, forward in bf16.items():
            cls.forward = forward  # type: ignore[method-assign]
        everything_bf16 = cosine(gradient(True), reference)
    finally:
        for cls, forward in kept.items():
            cls.forward = forward  # type: ignore[method-assign]
    # On this small high-rate batch: v1.3 0.998 vs 0.913; v1.4 (smaller residuals) 0.954 vs 0.310. The full
    # measurement (experiments/grad_fidelity.py, 8 x 256^2, levels 1-8) on v1.4: 0.997 vs 0.704; v1.6 0.981 vs 0.881,
    # v1.7 0.968 vs 0.746 (on this small batch v1.7 gives 0.886: bfloat16 drifts as the model trains).
    assert islands > 0.9, islands
    assert 1 - everything_bf16 > 5 * (1 - islands), (everything_bf16, islands)  # the islands' error is far smaller


def test_compiled_bf16_variable_rate_training_runs_and_resumes(folders, tmp_path):
    """The long runs' recipe: torch.compile'd bf16 + channels-last training of a variable-rate model lowers
    the loss, saves float32 weights under the model's own names, and resumes."""
    torch.set_num_threads(1)
    out = tmp_path / "compiled"
    kw = dict(arch="bmshj2018-hyperprior-vr", quality=0, amp="bf16", channels_last=True, compile=True, val_levels=(3,))
    train(_cfg(folders, out, 20, val_every=20, **kw))
    import torch._inductor.config as inductor_config

    assert inductor_config.compile_threads == 1  # compiled in-process: its CPU time counts in cpu_s
    rows = _rows(out)
    assert float(rows[-1]["loss"]) < 0.8 * float(rows[0]["loss"]), (rows[0]["loss"], rows[-1]["loss"])
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert "g_a.0.weight" in ckpt["model"] and all(v.dtype != torch.bfloat16 for v in ckpt["model"].values())
    train(_cfg(folders, out, 22, resume=True, **kw))
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 22


def test_compile_without_a_compiler_is_one_clear_error(folders, tmp_path):
    """`zoo train --compile` where inductor finds no C++ compiler: exit status 2 and one line naming the
    flag, not inductor's traceback."""
    env = {
        **os.environ,
        "CXX": str(tmp_path / "no-such-compiler"),
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"),  # no cached kernels to skip the compiler
        "TORCHINDUCTOR_FX_GRAPH_CACHE": "0",
    }
    cmd = [sys.executable, "-m", "zoo.cli", "train", "--arch", "bmshj2018-hyperprior", "--quality", "1"]
    cmd += ["--N", "16", "--M", "24", "--train", str(folders / "train"), "--val", str(folders / "val")]
    cmd += ["--out", str(tmp_path / "run"), "--steps", "2", "--patch", "64", "--batch-size", "2"]
    cmd += ["--workers", "0", "--quiet", "--compile"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--compile" in lines[0] and "Traceback" not in proc.stderr, proc.stderr[-2000:]


def test_bf16_channels_last_training_lowers_the_loss_and_resumes(folders, tmp_path):
    """The CPU recipe's fast path (bf16 autocast, channels-last) on a variable-rate model: the loss goes down,
    the validation codes real files, and a resumed run carries on from the checkpoint."""
    torch.set_num_threads(1)
    out = tmp_path / "bf16"
    kw = dict(arch="bmshj2018-hyperprior-vr", quality=0, amp="bf16", channels_last=True, val_levels=(3,))
    val = train(_cfg(folders, out, 30, val_every=30, **kw))
    rows = _rows(out)
    assert float(rows[-1]["loss"]) < 0.8 * float(rows[0]["loss"]), (rows[0]["loss"], rows[-1]["loss"])
    assert val["bpp"] > 0 and 5 < val["psnr"] < 60
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert all(v.dtype != torch.bfloat16 for v in ckpt["model"].values())  # float32 weights, as always
    train(_cfg(folders, out, 35, resume=True, **kw))
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 35


def test_a_moving_average_is_validated_saved_and_resumed_exactly(folders, tmp_path):
    """--ema: the checkpoint's weights ("model", what validation, best.pt and a release use) are the moving
    average, training continues from the raw weights ("raw"), and a resumed run ends where a straight one does."""
    torch.set_num_threads(1)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(_cfg(folders, straight, 12, ema_decay=0.9))
    train(_cfg(folders, resumed, 6, ema_decay=0.9))
    train(_cfg(folders, resumed, 12, ema_decay=0.9, resume=True))
    a = torch.load(straight / "last.pt", weights_only=True)
    b = torch.load(resumed / "last.pt", weights_only=True)
    for part in ("model", "raw"):
        for k, v in a[part].items():
            if v.is_floating_point():
                assert torch.allclose(v, b[part][k], atol=1e-6, rtol=0), (part, k)
    weight = "g_a.0.weight"
    assert not torch.equal(a["model"][weight], a["raw"][weight])  # an average, not a copy
    from zoo.registry import model_from_state_dict

    model = model_from_state_dict("bmshj2018-hyperprior", load_checkpoint_weights(straight / "best.pt"))
    assert torch.equal(model.state_dict()[weight], torch.load(straight / "best.pt", weights_only=True)["model"][weight])
    with pytest.raises(Exception, match="ema_decay"):
        train(_cfg(folders, tmp_path / "bad", 2, ema_decay=1.0))


def load_checkpoint_weights(path):
    from zoo.registry import load_checkpoint

    return load_checkpoint(path)[0]


def test_a_non_finite_step_is_skipped_and_a_diverged_run_stops(folders, tmp_path):
    """One NaN loss would make every weight NaN through the optimizer: the step is skipped (not logged, not
    applied), the summary counts it, and a run whose steps keep going non-finite stops with DivergedError."""
    from zoo.errors import DivergedError
    from zoo.train.trainer import Trainer

    torch.set_num_threads(1)

    def poisoned(trainer, bad_steps):
        real = trainer.loss_fn

        def loss_fn(*args):
            terms = real(*args)
            if trainer.step + 1 in bad_steps:
                terms.loss = terms.loss * float("nan")
            return terms

        trainer.loss_fn = loss_fn
        return trainer

    out = tmp_path / "run"
    poisoned(Trainer(_cfg(folders, out, 10, log_every=1)), {3}).run()
    weights = torch.load(out / "last.pt", weights_only=True)["model"]
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
    assert [r["step"] for r in _rows(out)] == [str(s) for s in range(1, 11) if s != 3]
    assert json.loads((out / "summary.json").read_text())["skipped_steps"] == 1

    out = tmp_path / "diverged"
    with pytest.raises(DivergedError, match="20 steps in a row"):
        poisoned(Trainer(_cfg(folders, out, 40)), set(range(8, 41))).run()
    weights = torch.load(out / "last.pt", weights_only=True)["model"]  # the checkpoint before it went bad
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


def test_gdn_mixing_that_comes_back_slightly_negative_stays_finite(monkeypatch):
    """cuDNN may compute GDN's channel mixing with a Winograd or FFT algorithm, whose rounding can take a sum
    of squares below zero; with beta near zero the norm's root would be NaN."""
    import torch.nn.functional as F

    from zoo import layers

    gdn = layers.GDN(4)
    with torch.no_grad():
        gdn.beta.fill_(gdn.beta_reparam.init(torch.full((1,), 1e-6)).item())
    real = F.conv2d
    monkeypatch.setattr(layers.F, "conv2d", lambda *a, **k: real(*a, **k) - 1e-3)  # an inexact algorithm
    x = torch.zeros(1, 4, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = gdn(x)
    assert torch.isfinite(y).all()


def test_leaving_the_process_group_destroys_it_and_releases_the_ddp_wrapper(tmp_path):
    # the end of a DDP run: after it no group is left, and nothing holds the DDP wrapper (its reducer holds the group)
    import gc
    import types
    import weakref

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from zoo.train.trainer import _leave_process_group

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    model = torch.nn.Linear(2, 2)
    ddp = DistributedDataParallel(model)
    gone = weakref.ref(ddp)
    trainer = types.SimpleNamespace(model=model, net=ddp, forward=ddp)
    del ddp
    _leave_process_group(trainer, together=True)  # type: ignore[arg-type]
    gc.collect()
    assert not dist.is_initialized()
    assert trainer.net is model and trainer.forward is model and gone() is None


def test_a_card_names_the_training_folders_without_the_machines_path():
    from zoo.train.config import describe_data

    files = ["/work/x/datasets/photos/001.png", "/work/x/datasets/photos/002.png", "/srv/datasets/wallpapers/1.jpg"]
    assert describe_data(files) == "datasets/photos (2) + datasets/wallpapers (1)"
    assert describe_data("runs/data") == "runs/data"
