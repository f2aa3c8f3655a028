"""Exported graphs match eager PyTorch; streams from either backend decode with the other."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.support import FIXTURE_ARCHS, fixture_codec, fixture_model, kodak_image
from zoo.codec import Codec
from zoo.export import export_graphs, graph_modules
from zoo.export.ort_backend import OrtModule, to_onnx_backend


@pytest.mark.parametrize("arch", FIXTURE_ARCHS)
def test_every_graph_matches_eager(arch, tmp_path):
    model = fixture_model(arch)
    export_graphs(model, tmp_path, ("onnx",))
    x = kodak_image("kodim23.png")[None]  # Kodak-sized input: 768x512
    with torch.no_grad():
        y = model.g_a(x)
        inputs = {"g_a": (x,), "g_s": (torch.round(y),)}
        if hasattr(model, "h_a"):
            z = torch.round(model.h_a(y))
            inputs.update({"h_a": (y,), "h_s": (z,)})
        for name, (module, _, _names) in graph_modules(model).items():
            if name == "context_step":
                crop, params = torch.randn(1, y.shape[1], 5, 5), torch.randn(1, 2 * y.shape[1], 1, 1)
                import onnxruntime as ort

                sess = ort.InferenceSession(str(tmp_path / "context_step.onnx"), providers=["CPUExecutionProvider"])
                got = torch.from_numpy(sess.run(None, {"y_crop": crop.numpy(), "params": params.numpy()})[0])
                ref = module(crop, params)
            else:
                ref = module(*inputs[name])
                got = OrtModule(tmp_path / f"{name}.onnx")(*inputs[name])
            assert (got - ref).abs().max().item() <= 1e-4, name


@pytest.mark.parametrize("arch", FIXTURE_ARCHS)
def test_streams_are_interchangeable(arch):
    eager = fixture_codec(arch)
    onnx = Codec(to_onnx_backend(eager.model), eager.entry, eager.fingerprint)
    x = (
        kodak_image("kodim23.png")[:, 128:256, 256:448]
        if "cheng" in arch or arch == "mbt2018"
        else kodak_image("kodim23.png")
    )
    for enc, dec in ((eager, onnx), (onnx, eager)):
        c = enc.compress(x)
        a = dec.decompress(c)  # the index checksum check passes: same indexes on both sides
        b = enc.decompress(c)
        assert (a - b).abs().max().item() <= 1e-3
    # Same symbols from either encoder (the transforms differ only in the last bits).
    assert eager.compress(x).payload_bytes == pytest.approx(onnx.compress(x).payload_bytes, rel=0.01)


def test_torchscript_loads_without_zoo(tmp_path):
    model = fixture_model("bmshj2018-hyperprior")
    export_graphs(model, tmp_path, ("torchscript",))
    x = torch.rand(1, 3, 64, 128)
    np.save(tmp_path / "x.npy", x.numpy())
    code = (
        "import sys; sys.modules['zoo'] = None\n"  # any attempt to import zoo fails
        "import numpy as np, torch\n"
        f"m = torch.jit.load(r'{tmp_path / 'g_a.pt'}')\n"
        f"y = m(torch.from_numpy(np.load(r'{tmp_path / 'x.npy'}')))\n"
        f"np.save(r'{tmp_path / 'y.npy'}', y.detach().numpy())\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path, timeout=120)
    with torch.no_grad():
        ref = model.g_a(x).numpy()
    assert np.abs(np.load(tmp_path / "y.npy") - ref).max() <= 1e-4


def test_export_cli_writes_metadata(tmp_path, fixture_entry):
    import json

    from zoo.cli import main

    assert main(["export", str(fixture_entry), "--format", "both", "--out", str(tmp_path)]) == 0
    meta = json.loads((tmp_path / "metadata.json").read_text())
    assert meta["entry"]["arch"] == "bmshj2018-hyperprior" and meta["opset"] >= 13
    assert {"g_a", "h_a", "h_s", "g_s"} <= set(meta["graphs"])
    assert (tmp_path / "g_s.pt").exists() and (tmp_path / "g_s.onnx").exists()
