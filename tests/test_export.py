"""Exported graphs match eager PyTorch; streams from either backend decode with the other."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import Tensor, nn

from tests.support import FIXTURE_ARCHS, fixture_codec, fixture_model, kodak_image
from zoo.codec import Codec
from zoo.compressed import EntryId
from zoo.errors import EntryNotFound
from zoo.export import export_graphs
from zoo.export.ort_backend import onnx_backend_from_folder, to_onnx_backend
from zoo.models.base import CompressionModel
from zoo.registry import create_model

# Architectures without a CompressAI fixture run as small seeded random models.
ARCHS = (*FIXTURE_ARCHS, "bmshj2018-factorized-relu")


@cache
def _random_model(arch: str) -> CompressionModel:
    torch.manual_seed(0)
    model = create_model(arch, N=32, M=48).eval()
    with torch.no_grad():  # at initialisation y is within +-0.1 and quantizes to all zeros: spread it out
        model.g_a[-1].weight.mul_(100)
    model.update()
    return model


def _model(arch: str) -> CompressionModel:
    return fixture_model(arch) if arch in FIXTURE_ARCHS else _random_model(arch)


def _codec(arch: str) -> Codec:
    if arch in FIXTURE_ARCHS:
        return fixture_codec(arch)
    return Codec(_random_model(arch), EntryId(arch, 1, "mse", "random"), bytes(16))


def _is_autoregressive(arch: str) -> bool:
    return hasattr(_model(arch), "context_prediction")


def graph_inputs(model: nn.Module, x: Tensor) -> dict[str, dict[str, Tensor]]:
    """Realistic inputs of every graph the architecture should export, by graph then input name."""
    with torch.no_grad():
        y = model.g_a(x)
        y_hat = torch.round(y)
        inputs = {"g_a": {"x": x}, "g_s": {"y_hat": y_hat}}
        if hasattr(model, "h_a"):
            z_hat = torch.round(model.h_a(y))
            inputs.update({"h_a": {"y": y}, "h_s": {"z_hat": z_hat}})
            if hasattr(model, "context_prediction"):
                inputs["context_prediction"] = {"y_hat": y_hat}
                inputs["entropy_parameters"] = {"params": model.h_s(z_hat), "ctx": model.context_prediction(y_hat)}
    return inputs


def eager_output(model: nn.Module, name: str, inputs: dict[str, Tensor]) -> Tensor:
    """What the original model (unfolded GDNs, masked convolution) computes for one graph."""
    with torch.no_grad():
        if name == "entropy_parameters":
            return model.entropy_parameters(torch.cat((inputs["params"], inputs["ctx"]), dim=1))
        (arg,) = inputs.values()
        return getattr(model, name)(arg)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """arch -> a folder with its ONNX graphs, each exported once for the module's tests."""
    folders: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in folders:
            folders[arch] = tmp_path_factory.mktemp(arch)
            export_graphs(_model(arch), folders[arch], ("onnx",))
        return folders[arch]

    return get


@pytest.mark.parametrize("arch", ARCHS)
def test_every_graph_matches_eager(arch, exported):
    model = _model(arch)
    tmp_path = exported(arch)
    meta = json.loads((tmp_path / "metadata.json").read_text())
    # Kodak-sized input (768x512), not the 128x192 the graphs were exported at: height and width are dynamic.
    inputs = graph_inputs(model, kodak_image("kodim23.png")[None])
    assert set(meta["graphs"]) == set(inputs)
    for name, feeds in inputs.items():
        sess = ort.InferenceSession(str(tmp_path / f"{name}.onnx"), providers=["CPUExecutionProvider"])
        assert [i.name for i in sess.get_inputs()] == meta["inputs"][name] == list(feeds), name
        (got,) = sess.run(None, {k: v.numpy() for k, v in feeds.items()})
        ref = eager_output(model, name, feeds).numpy()
        assert got.shape == ref.shape, name
        assert np.abs(got - ref).max() <= 1e-4, name


def test_context_graphs_are_separate_and_folded(tmp_path):
    export_graphs(fixture_model("mbt2018"), tmp_path, ("onnx",))
    meta = json.loads((tmp_path / "metadata.json").read_text())
    assert {"context_prediction", "entropy_parameters"} <= set(meta["graphs"]) and "context_model" in meta
    # The causal mask is in the weights: one plain convolution, nothing computed from a mask at run time.
    ops = [n.op_type for n in onnx.load(str(tmp_path / "context_prediction.onnx")).graph.node]
    assert ops == ["Conv"]
    ops = [n.op_type for n in onnx.load(str(tmp_path / "entropy_parameters.onnx")).graph.node]
    assert ops[0] == "Concat" and set(ops[1:]) == {"Conv", "LeakyRelu"}


@contextmanager
def g_s_inputs(model: nn.Module) -> Iterator[list[Tensor]]:
    """Records what the decoder hands to g_s: the dequantized latent y_hat."""
    seen: list[Tensor] = []
    handle = model.g_s.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    try:
        yield seen
    finally:
        handle.remove()


@pytest.mark.parametrize("arch", ARCHS)
def test_streams_are_interchangeable(arch):
    eager = _codec(arch)
    onnx_codec = Codec(to_onnx_backend(eager.model), eager.entry, eager.fingerprint)
    x = kodak_image("kodim23.png")
    if _is_autoregressive(arch):
        x = x[:, 128:256, 256:448]  # the context model costs one network call per wavefront
    sizes = []
    for enc in (eager, onnx_codec):
        c = enc.compress(x)
        sizes.append(c.payload_bytes)
        with g_s_inputs(eager.model) as y_eager, g_s_inputs(onnx_codec.model) as y_onnx:
            a = eager.decompress(c)
            b = onnx_codec.decompress(c)  # the index checksum check passes: same indexes on both sides
        assert len(y_eager) == len(y_onnx) == 1
        assert y_eager[0].abs().sum() > 0
        assert torch.equal(y_eager[0], y_onnx[0])  # bit-exact y_hat whichever backend decodes
        assert (a - b).abs().max().item() <= 1e-3
    # Same symbols from either encoder, give or take the transforms' last bits.
    assert sizes[0] == pytest.approx(sizes[1], rel=0.01)


def test_onnx_backend_leaves_no_temporary_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    model = fixture_model("bmshj2018-factorized")
    ort_model = to_onnx_backend(model)
    assert list(tmp_path.iterdir()) == []
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert (ort_model.g_a(x) - model.g_a(x)).abs().max().item() <= 1e-4  # sessions outlive their files


def test_onnx_backend_from_exported_folder(tmp_path, monkeypatch):
    eager = fixture_codec("mbt2018-mean")
    export_graphs(eager.model, tmp_path, ("onnx",))

    def no_export(*args, **kwargs):
        raise AssertionError("onnx_backend_from_folder must not export")

    monkeypatch.setattr(torch.onnx, "export", no_export)
    onnx_codec = Codec(onnx_backend_from_folder(eager.model, tmp_path), eager.entry, eager.fingerprint)
    x = kodak_image("kodim23.png")[:, :256, :256]
    c = eager.compress(x)
    with g_s_inputs(eager.model) as y_eager, g_s_inputs(onnx_codec.model) as y_onnx:
        a, b = eager.decompress(c), onnx_codec.decompress(c)
    assert torch.equal(y_eager[0], y_onnx[0]) and (a - b).abs().max().item() <= 1e-3
    (tmp_path / "g_s.onnx").unlink()
    with pytest.raises(EntryNotFound, match="g_s.onnx"):
        onnx_backend_from_folder(eager.model, tmp_path)


def test_load_local_onnx_backend_takes_its_thread_count(fixture_entry):
    import zoo
    from zoo.errors import InputError

    codec = zoo.load_local(fixture_entry, backend="onnx", ort_threads=1)
    assert codec.model.backend == "onnx"
    sessions = [m.session for m in codec.model.modules() if hasattr(m, "session")]
    assert len(sessions) == 3  # g_a, h_a, g_s
    assert {s.get_session_options().intra_op_num_threads for s in sessions} == {1}
    for bad in ({"backend": "torch", "ort_threads": 1}, {"backend": "onnx", "ort_threads": 0}):
        with pytest.raises(InputError, match="ort_threads"):
            zoo.load_local(fixture_entry, **bad)


def test_torchscript_graphs_load_without_zoo_and_match_eager(tmp_path):
    model = fixture_model("mbt2018")
    export_graphs(model, tmp_path, ("torchscript",))
    # 256x384, not the 128x192 the graphs were traced at.
    inputs = graph_inputs(model, kodak_image("kodim23.png")[None, :, :256, :384])
    assert set(json.loads((tmp_path / "metadata.json").read_text())["graphs"]) == set(inputs)
    for name, feeds in inputs.items():
        np.savez(tmp_path / f"{name}.in.npz", **{k: v.numpy() for k, v in feeds.items()})
    code = (
        "import sys; sys.modules['zoo'] = None\n"  # any attempt to import zoo fails
        "import json, numpy as np, torch\n"
        "meta = json.load(open('metadata.json'))\n"
        "for name in meta['graphs']:\n"
        "    feeds = np.load(f'{name}.in.npz')\n"
        "    args = [torch.from_numpy(feeds[k]) for k in meta['inputs'][name]]\n"
        "    np.save(f'{name}.out.npy', torch.jit.load(f'{name}.pt')(*args).detach().numpy())\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path, timeout=120)
    for name, feeds in inputs.items():
        ref = eager_output(model, name, feeds).numpy()
        got = np.load(tmp_path / f"{name}.out.npy")
        assert got.shape == ref.shape, name
        assert np.abs(got - ref).max() <= 1e-4, name


def test_export_cli_writes_metadata(tmp_path, fixture_entry):
    from zoo.cli import main

    assert main(["export", str(fixture_entry), "--format", "both", "--out", str(tmp_path)]) == 0
    meta = json.loads((tmp_path / "metadata.json").read_text())
    assert meta["entry"]["arch"] == "bmshj2018-hyperprior" and meta["opset"] >= 13
    assert {"g_a", "h_a", "h_s", "g_s"} <= set(meta["graphs"])
    assert (tmp_path / "g_s.pt").exists() and (tmp_path / "g_s.onnx").exists()


HYPERPRIOR_ARCHS = [a for a in ARCHS if a not in ("bmshj2018-factorized", "bmshj2018-factorized-relu")]


@contextmanager
def recorded_indexes(model: nn.Module) -> Iterator[list[Tensor]]:
    """Every table-index tensor the model's Gaussian conditional builds, in order."""
    gc = model.gaussian_conditional
    seen: list[Tensor] = []
    build = gc.build_indexes

    def recording(scales: Tensor) -> Tensor:
        out = build(scales)
        seen.append(out.detach().clone().reshape(-1))
        return out

    gc.build_indexes = recording
    try:
        yield seen
    finally:
        del gc.build_indexes


def _index_mismatch_refused(encoder: Codec, decoder: Codec, x: Tensor) -> tuple[int, int, str]:
    """Encode with one codec and decode with the other: (mismatched indexes, total, what refused). Where the
    decoder's indexes differ from the encoder's it must refuse (the index checksum; or, with many wrong
    tables, the coder running off its stream first); where they agree it must decode."""
    from zoo.errors import BitstreamError

    with recorded_indexes(encoder.model) as enc:
        c = encoder.compress(x)
    with recorded_indexes(decoder.model) as dec:
        try:
            decoder.decompress(c)
            refused = ""
        except BitstreamError as exc:
            refused = "checksum" if "table indexes differ" in str(exc) else "coder"
    a, b = torch.cat(enc), torch.cat(dec)
    n = min(a.numel(), b.numel())  # a decoder that the coder stopped early computed fewer
    mismatches = int((a[:n] != b[:n]).sum())
    assert bool(refused) == (mismatches > 0), f"{mismatches} index mismatches, refused by {refused or 'nothing'}"
    return mismatches, a.numel(), refused


def _nudged(model: nn.Module) -> None:
    """Scales 0.1% larger on this side only: a stand-in for a less precise backend (fp16, another GPU)."""
    if _is_autoregressive_model(model):
        step = model.context_step
        object.__setattr__(model, "context_step", lambda crop, p: _scale_first(step(crop, p)))
    else:
        h_s = model.f64("h_s")
        object.__setattr__(model, "f64", {"h_s": lambda z: h_s(z) * (1 + 1e-3)}.__getitem__)


def _scale_first(pair: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    return pair[0] * (1 + 1e-3), pair[1]


def _is_autoregressive_model(model: nn.Module) -> bool:
    return hasattr(model, "context_prediction")


@pytest.mark.parametrize("arch", HYPERPRIOR_ARCHS)
def test_every_graph_in_onnx_runtime_on_one_side(arch, exported, capsys):
    """The cross-backend risk itself: every shipped graph (h_s and the context graphs too) in float32 ONNX
    Runtime on one side, eager float64 on the other, both directions. Index mismatches are counted and
    reported, and each must be refused, never decoded into another image. Scales nudged by 0.1% make
    mismatches happen, so the refusal is exercised too."""
    from zoo.export.ort_backend import onnx_everywhere

    eager = _codec(arch)
    ort_codec = Codec(onnx_everywhere(eager.model, exported(arch), threads=1), eager.entry, eager.fingerprint)
    size = 32 if _is_autoregressive(arch) else 128  # the raster-order context loop costs one call per position
    crops = [kodak_image(name)[:, 128 : 128 + size, 256 : 256 + size] for name in ("kodim23.png", "kodim05.png")]
    found, total = 0, 0
    for enc, dec in ((ort_codec, eager), (eager, ort_codec)):
        m, n, _ = _index_mismatch_refused(enc, dec, crops[0])
        found, total = found + m, total + n

    nudged = Codec(onnx_everywhere(eager.model, exported(arch), threads=1), eager.entry, eager.fingerprint)
    _nudged(nudged.model)
    forced = [_index_mismatch_refused(nudged, eager, x) for x in crops]
    assert sum(m for m, _, _ in forced) > 0
    with capsys.disabled():
        print(
            f"\n{arch}: every graph in ONNX Runtime vs eager: {found} of {total} indexes differ; "
            f"scales nudged 0.1%: {[m for m, _, _ in forced]} differ, refused by {[r for _, _, r in forced]}"
        )


def test_both_onnx_runtime_builds_installed_is_named(monkeypatch):
    """[export] and [gpu] exclude each other: with both runtimes installed, the notice says which to remove."""
    from importlib import metadata

    from zoo.export.ort_backend import runtime_conflict

    real = metadata.distribution
    assert runtime_conflict() is None  # this environment has the CPU build only

    def both(name: str):
        return real("onnxruntime") if name == "onnxruntime-gpu" else real(name)

    monkeypatch.setattr(metadata, "distribution", both)
    notice = runtime_conflict()
    assert notice is not None and "onnxruntime-gpu" in notice and "zoo-codecs[gpu]" in notice
