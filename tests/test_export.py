"""Exported graphs match eager PyTorch; streams from either backend decode with the other."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from functools import cache
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tests.support import FIXTURE_ARCHS, fixture_codec, fixture_model, kodak_image
from zoo.codec import Codec
from zoo.compressed import EntryId
from zoo.entropy import EntropyBottleneck, GaussianConditional, crc_indexes
from zoo.errors import EntryNotFound
from zoo.export import export_graphs
from zoo.export.graphs import neighbourhoods, submodule
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


def _test_image(arch: str) -> Tensor:
    """kodim23, or a crop of it where a whole Kodak image is slow on CPU: raster-order context models pay
    one network call per position, ELIC's transforms are the heaviest in the registry."""
    x = kodak_image("kodim23.png")
    return x[:, 128:256, 256:448] if _is_autoregressive(arch) or arch.startswith("elic") else x


def graph_inputs(model: nn.Module, x: Tensor) -> dict[str, dict[str, Tensor]]:
    """Realistic inputs of every graph the architecture should export, by graph then input name."""
    with torch.no_grad():
        y = model.g_a(x)
        y_hat = torch.round(y)
        inputs = {"g_a": {"x": x}, "g_s": {"y_hat": y_hat}}
        h_a, h_s = submodule(model, "h_a"), submodule(model, "h_s")
        if h_a is not None and h_s is not None:
            z_hat = torch.round(h_a(y))
            inputs.update({"h_a": {"y": y}, "h_s": {"z_hat": z_hat}})
            if hasattr(model, "context_graphs"):  # checkerboard and ELIC name their own context graphs
                for name, (_, args, names) in model.context_graphs(y_hat, h_s(z_hat)).items():
                    inputs[name] = dict(zip(names, args, strict=True))
            elif hasattr(model, "context_prediction"):
                inputs["context_prediction"] = {"y_hat": y_hat}
                inputs["context_prediction_wavefront"] = {"neighbourhoods": neighbourhoods(y_hat)}
                inputs["entropy_parameters"] = {"params": model.h_s(z_hat), "ctx": model.context_prediction(y_hat)}
    return inputs


def eager_output(model: nn.Module, name: str, inputs: dict[str, Tensor]) -> Tensor:
    """What the original model (unfolded GDNs, masked convolution) computes for one graph."""
    with torch.no_grad():
        if hasattr(model, "context_graphs") and name not in ("g_a", "g_s", "h_a", "h_s"):
            h_s = submodule(model, "h_s")
            assert h_s is not None
            probe = model.context_graphs(torch.zeros(1, model.M, 4, 4), h_s(torch.zeros(1, model.N, 1, 1)))
            return probe[name][0](*inputs.values())
        if name == "entropy_parameters":
            return model.entropy_parameters(torch.cat((inputs["params"], inputs["ctx"]), dim=1))
        if name == "context_prediction_wavefront":  # the masked convolution at each neighbourhood's centre
            cp = model.context_prediction
            return F.conv2d(inputs["neighbourhoods"], cp.masked_weight(), cp.bias)
        (arg,) = inputs.values()
        module = submodule(model, name)
        assert module is not None
        return module(arg)


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
    # Kodak-sized input (768x512; ELIC a 192x128 crop), not the 128x192 the graphs were exported at: height
    # and width are dynamic.
    x = kodak_image("kodim23.png") if not arch.startswith("elic") else _test_image(arch)
    inputs = graph_inputs(model, x[None])
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
    # The wavefront form is the same convolution without padding: a neighbourhood in, its centre's context out.
    (node,) = onnx.load(str(tmp_path / "context_prediction_wavefront.onnx")).graph.node
    assert node.op_type == "Conv" and all(p == 0 for a in node.attribute if a.name == "pads" for p in a.ints)
    ops = [n.op_type for n in onnx.load(str(tmp_path / "entropy_parameters.onnx")).graph.node]
    assert ops[0] == "Concat" and set(ops[1:]) == {"Conv", "LeakyRelu"}


@pytest.mark.parametrize("arch", ["cheng2020-anchor-checkerboard", "elic2022-chandelier"])
def test_checkerboard_context_graphs_are_folded(arch, tmp_path):
    model = fixture_model(arch)
    export_graphs(model, tmp_path, ("onnx",))
    meta = json.loads((tmp_path / "metadata.json").read_text())
    groups = [""] if arch.startswith("cheng") else [f"_y{k}" for k in range(len(model.groups))]
    expected = {f"{g}{k}" for k in groups for g in ("context_prediction", "entropy_parameters")}
    expected |= {f"channel_context{k}" for k in groups[1:]}
    assert expected == set(meta["graphs"]) - {"g_a", "g_s", "h_a", "h_s"}
    assert "checkerboard" in meta["context_model"]
    graph = onnx.load(str(tmp_path / f"context_prediction{groups[-1]}.onnx")).graph
    assert [n.op_type for n in graph.node] == ["Conv"]
    # The checkerboard mask is in the weights: a position never sees its own colour, the centre included.
    (weight,) = [onnx.numpy_helper.to_array(t) for t in graph.initializer if t.dims and len(t.dims) == 4]
    assert np.all(weight[:, :, 0::2, 0::2] == 0) and np.all(weight[:, :, 1::2, 1::2] == 0)
    assert np.any(weight[:, :, 0::2, 1::2] != 0)


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
    x = _test_image(arch)
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


def test_onnx_backend_runs_the_hyper_transform_of_latent_codec_models(tmp_path):
    """h_a lives at latent_codec.hyper.h_a in CompressAI's checkerboard and ELIC layouts: ONNX Runtime runs it there."""
    from zoo.export.ort_backend import OrtModule

    ort_model = to_onnx_backend(fixture_model("cheng2020-anchor-checkerboard"), cache_dir=tmp_path)
    assert isinstance(ort_model.latent_codec.hyper.h_a, OrtModule)
    assert isinstance(ort_model.g_a, OrtModule) and isinstance(ort_model.g_s, OrtModule)
    assert not isinstance(ort_model.latent_codec.hyper.h_s, OrtModule)  # float64 entropy parameters stay in torch


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


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["mbt2018", "cheng2020-anchor-checkerboard"])
def test_torchscript_graphs_load_without_zoo_and_match_eager(arch, tmp_path):
    model = fixture_model(arch)
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
    """Every table-index tensor the model's Gaussian conditionals build (ELIC has one per channel group), in
    the order coding asks for them."""
    seen: list[Tensor] = []
    gcs = [m for m in model.modules() if isinstance(m, GaussianConditional)]
    for gc in gcs:

        def recording(scales: Tensor, build=gc.build_indexes) -> Tensor:
            out = build(scales)
            seen.append(out.detach().clone().reshape(-1))
            return out

        gc.build_indexes = recording
    try:
        yield seen
    finally:
        for gc in gcs:
            del gc.build_indexes


@contextmanager
def no_torch_network() -> Iterator[None]:
    """Any convolution or linear layer torch computes fails: what runs inside is ONNX Runtime and the coder."""

    def ran(*args, **kwargs):
        raise AssertionError("a torch network ran where only ONNX Runtime graphs should")

    with pytest.MonkeyPatch.context() as mp:
        for name in ("conv2d", "conv_transpose2d", "linear"):
            mp.setattr(F, name, ran)
        yield


def _index_mismatch_refused(encoder: nn.Module, decoder: nn.Module, x: Tensor, order: str) -> tuple[int, int, str]:
    """Encode with one model and decode with the other: (mismatched indexes, total, what refused). Where the
    decoder's indexes differ from the encoder's it must refuse (the index checksum; or, with many wrong
    tables, the coder running off its stream first); where they agree it must decode. The onnx_everywhere side
    codes with no torch network."""
    from zoo.errors import BitstreamError

    def guard(model: nn.Module):
        return no_torch_network() if getattr(model, "backend", "") == "onnx-everywhere" else nullcontext()

    with recorded_indexes(encoder) as enc, guard(encoder):
        streams = encoder.compress(x[None], order=order)
    with recorded_indexes(decoder) as dec, guard(decoder):
        try:
            decoder.decompress(streams)
            refused = ""
        except BitstreamError as exc:
            refused = "checksum" if "table indexes differ" in str(exc) else "coder"
    a, b = torch.cat(enc), torch.cat(dec)
    n = min(a.numel(), b.numel())  # a decoder that the coder stopped early computed fewer
    mismatches = int((a[:n] != b[:n]).sum())
    assert bool(refused) == (mismatches > 0), f"{mismatches} index mismatches, refused by {refused or 'nothing'}"
    # Where the coder refused first, the index checksum would have too: the one the decoder computed (z's,
    # then every index in coding order) differs from the stream's exactly when an index does.
    (stream,) = streams
    eb = next(m for m in decoder.modules() if isinstance(m, EntropyBottleneck))
    crc = eb.index_crc(stream.latent_hw)
    for indexes in dec:
        crc = crc_indexes(indexes, crc)
    assert (crc != stream.index_checksum) == (mismatches > 0 or a.numel() != b.numel())
    return mismatches, a.numel(), refused


def _nudged(model: nn.Module, by: float) -> None:
    """h_s's output larger by `by` on this side only: a stand-in for a less precise backend (fp16, another GPU).
    (Every context model's scales are computed from h_s's params, so the nudge reaches them too.)"""
    path = dict(getattr(model, "graph_paths", {})).get("h_s", "h_s")
    f64 = model.f64
    h_s = f64(path)
    object.__setattr__(model, "f64", lambda name: (lambda z: h_s(z) * (1 + by)) if name == path else f64(name))


@pytest.mark.parametrize("arch", HYPERPRIOR_ARCHS)
def test_every_graph_in_onnx_runtime_on_one_side(arch, exported, capsys):
    """The cross-backend risk itself: every shipped graph (h_s and the context graphs too: mbt2018's per
    wavefront and per raster position, the checkerboard's per pass, ELIC's per channel group) in float32 ONNX
    Runtime on one side, eager float64 on the other, both directions. Index mismatches are counted and
    reported, and each must be refused, never decoded into another image. h_s's output nudged on one side
    makes mismatches happen, so the refusal is exercised too."""
    from zoo.export.ort_backend import onnx_everywhere

    eager = _model(arch)
    ort_model = onnx_everywhere(eager, exported(arch), threads=1)
    # mbt2018 and cheng2020 also decode format 1 (raster order), with the padded context_prediction graph
    orders = ("wavefront", "raster") if _is_autoregressive(arch) else ("wavefront",)
    size = 64 if _is_autoregressive(arch) else 128  # context models: one coder call per wavefront
    crops = [kodak_image(name)[:, 128 : 128 + size, 256 : 256 + size] for name in ("kodim23.png", "kodim05.png")]
    found, total = 0, 0
    for order in orders:
        for enc, dec in ((ort_model, eager), (eager, ort_model)):
            m, n, _ = _index_mismatch_refused(enc, dec, crops[0], order)
            found, total = found + m, total + n

    nudged = onnx_everywhere(eager, exported(arch), threads=1)
    _nudged(nudged, 1e-2)
    forced = [_index_mismatch_refused(nudged, eager, x, order) for x in crops for order in orders]
    assert sum(m for m, _, _ in forced) > 0
    with capsys.disabled():
        print(
            f"\n{arch}: every graph in ONNX Runtime vs eager (y in {' and '.join(orders)} order): "
            f"{found} of {total} indexes differ; "
            f"h_s nudged 1%: {[m for m, _, _ in forced]} differ, refused by {[r for _, _, r in forced]}"
        )


def test_a_float32_context_mismatch_is_refused(exported):
    """The risk as it occurs: on the whole of kodim02, mbt2018's float32 context graphs in ONNX Runtime put one
    scale across a table boundary that zoo's float64 scale stays below (8e-7 relative, measured with
    experiments/index_mismatch.py --coding). The stream must be refused, never decoded into another image."""
    from zoo.export.ort_backend import onnx_everywhere

    eager = _model("mbt2018")
    ort_model = onnx_everywhere(eager, exported("mbt2018"), threads=1)
    mismatches, _, refused = _index_mismatch_refused(eager, ort_model, kodak_image("kodim02.png"), "wavefront")
    if not mismatches:  # float32 rounding is the CPU's: elsewhere this scale may land on the same side
        pytest.skip("ONNX Runtime computed every table index as zoo does on this CPU")
    assert refused


def test_onnx_everywhere_names_missing_context_graphs(exported, tmp_path):
    """A folder exported before context_prediction_wavefront existed is refused with what to do, not an ORT error."""
    import shutil

    from zoo.export.ort_backend import onnx_everywhere

    folder = shutil.copytree(exported("mbt2018"), tmp_path / "graphs")
    (folder / "context_prediction_wavefront.onnx").unlink()
    with pytest.raises(EntryNotFound, match="context_prediction_wavefront.onnx.*export the graphs again"):
        onnx_everywhere(_model("mbt2018"), folder)


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
