"""The polyphase rewrite of transposed convolutions computes what the exported ConvTranspose computed."""

from __future__ import annotations

import json
import warnings
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from tests.support import fixture_model
from zoo.export import export_graphs
from zoo.export.rewrite import split_transposed_convs


def _export(module: nn.Module, x: torch.Tensor, path) -> onnx.ModelProto:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (x,),
            str(path),
            input_names=["x"],
            output_names=["out"],
            opset_version=17,
            dynamic_axes={"x": {0: "b", 2: "h", 3: "w"}, "out": {0: "b", 2: "oh", 3: "ow"}},
            dynamo=False,
        )
    return onnx.load(str(path))


def _run(model: onnx.ModelProto, x: torch.Tensor) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x.numpy()})[0]


def _ops(model: onnx.ModelProto) -> Counter[str]:
    return Counter(n.op_type for n in model.graph.node)


@pytest.mark.parametrize(
    "kernel, stride, pad, out_pad",
    [(5, 2, 2, 1), (3, 2, 1, 1), (4, 2, 1, 0), (2, 2, 0, 0), (5, 3, 1, 0), (6, 3, 2, 1)],
)
def test_wide_transposed_conv_becomes_phase_convs(kernel, stride, pad, out_pad, tmp_path):
    torch.manual_seed(kernel * 10 + stride)
    layer = nn.ConvTranspose2d(24, 16, kernel, stride, pad, out_pad).eval()
    x = torch.randn(2, 24, 7, 9)  # odd sizes, batch 2: no phase may lean on even shapes
    model = _export(layer, x, tmp_path / "layer.onnx")
    assert split_transposed_convs(model) == 1
    ops = _ops(model)
    assert ops["ConvTranspose"] == 0 and ops["Conv"] == stride * stride and ops["DepthToSpace"] == 1
    with torch.no_grad():
        ref = layer(x).numpy()
    got = _run(model, x)
    assert got.shape == ref.shape == (2, 16, 7 * stride, 9 * stride)
    assert np.abs(got - ref).max() <= 1e-5
    # The replaced weight is gone from the file: the phase weights are the same numbers, split.
    conv_inputs = {name for n in model.graph.node if n.op_type == "Conv" for name in n.input[1:]}
    assert {i.name for i in model.graph.initializer} == conv_inputs


@pytest.mark.parametrize(
    "layer",
    [
        nn.ConvTranspose2d(24, 8, 5, 2, 2, 1),  # too narrow to pay for the interleave
        nn.ConvTranspose2d(24, 16, 5, 2, 2, 1, groups=2),
        nn.ConvTranspose2d(24, 16, 5, 2, 1, 0),  # output is not exactly 2x the input
        nn.ConvTranspose2d(24, 16, 3, 1, 1),
    ],
)
def test_other_transposed_convs_are_left_alone(layer, tmp_path):
    model = _export(layer.eval(), torch.randn(1, 24, 6, 6), tmp_path / "layer.onnx")
    before = model.SerializeToString()
    assert split_transposed_convs(model) == 0
    assert model.SerializeToString() == before


class Synthesis(nn.Module):
    """Wide transposed conv -> pointwise ops (a GDN-like normalisation, ReLU) -> narrow transposed conv."""

    def __init__(self, share_middle: bool = False):
        super().__init__()
        self.up = nn.ConvTranspose2d(20, 32, 5, 2, 2, 1)
        self.gamma = nn.Conv2d(32, 32, 1)
        self.out = nn.ConvTranspose2d(32, 3, 5, 2, 2, 1)
        self.share_middle = share_middle
        with torch.no_grad():
            self.gamma.weight.abs_()
            self.gamma.bias.abs_().add_(0.5)

    def forward(self, x):
        t = self.up(x)
        t = torch.relu(t * torch.sqrt(self.gamma(t * t)))
        out = self.out(t)
        if self.share_middle:  # the middle tensor is used elsewhere too: the interleave must stay
            out = out + t.mean(dim=1, keepdim=True).repeat_interleave(2, 2).repeat_interleave(2, 3)
        return out


@pytest.mark.parametrize("share_middle", [False, True])
def test_pointwise_ops_run_per_phase_into_the_narrow_layer(share_middle, tmp_path):
    torch.manual_seed(3)
    net = Synthesis(share_middle).eval()
    x = torch.randn(1, 20, 5, 7)
    model = _export(net, x, tmp_path / "syn.onnx")
    assert split_transposed_convs(model) == 1
    ops = _ops(model)
    if share_middle:
        assert ops["DepthToSpace"] == 1 and ops["ConvTranspose"] == 1 and ops["Sum"] == 0
    else:
        # No interleave: the normalisation runs once per phase, the narrow layer once per phase, summed.
        assert ops["DepthToSpace"] == 0 and ops["Concat"] == 0
        assert ops["ConvTranspose"] == 4 and ops["Sum"] == 1 and ops["Sqrt"] == 4
    with torch.no_grad():
        ref = net(x).numpy()
    got = _run(model, x)
    assert got.shape == ref.shape == (1, 3, 20, 28)
    assert np.abs(got - ref).max() <= 1e-5


def test_exported_synthesis_has_no_wide_transposed_conv(tmp_path):
    export_graphs(fixture_model("bmshj2018-hyperprior"), tmp_path, ("onnx",))
    meta = json.loads((tmp_path / "metadata.json").read_text())
    assert meta["onnx_rewrites"]["polyphase_transposed_convs"] == {"g_s": 3, "h_s": 2}
    g_s = _ops(onnx.load(str(tmp_path / "g_s.onnx")))
    # Three wide layers split; the last (to RGB) read per phase of the third: four ConvTranspose, one Sum.
    assert g_s["ConvTranspose"] == 4 and g_s["Sum"] == 1 and g_s["DepthToSpace"] == 2
    h_s = _ops(onnx.load(str(tmp_path / "h_s.onnx")))
    assert h_s["ConvTranspose"] == 0 and h_s["DepthToSpace"] == 2


def test_torchscript_export_records_no_onnx_rewrite(tmp_path):
    export_graphs(fixture_model("bmshj2018-hyperprior"), tmp_path, ("torchscript",))
    assert "onnx_rewrites" not in json.loads((tmp_path / "metadata.json").read_text())
    assert not list(tmp_path.glob("*.onnx"))
