"""The exported graphs: one per transform, dynamic height and width, reparametrisations folded.

    g_a: x (1,3,H,W) -> y          h_a: y -> z            h_s: z_hat -> params (scales[, means])
    g_s: y_hat -> x_hat
    mbt2018, cheng2020:  context_prediction: y_hat -> ctx      entropy_parameters: (params, ctx) -> gp
                         context_prediction_wavefront: k x k neighbourhoods (K, M, k, k) -> ctx (K, 2M, 1, 1)
    checkerboard, ELIC:  the models' own `context_graphs` (context_prediction[_yk], entropy_parameters[_yk],
                         ELIC's channel_context_yk)

GDN's non-negative reparametrisations and the context model's causal mask are computed once and stored as
plain constants (`foldable_copy`), so the graphs hold no training-time machinery.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.compressed import EntryId
from zoo.layers import GDN, MaskedConv2d
from zoo.models.base import CompressionModel

OPSET = 17


class FoldedGDN(nn.Module):
    """GDN with beta and gamma already through their reparametrisation: x / sqrt(beta + gamma * x^2)."""

    beta: Tensor
    gamma: Tensor

    def __init__(self, gdn: GDN):
        super().__init__()
        beta, gamma = gdn.effective_params()
        self.register_buffer("beta", beta.detach().clone())
        self.register_buffer("gamma", gamma.detach().clone())
        self.inverse = gdn.inverse

    def forward(self, x: Tensor) -> Tensor:
        norm = F.conv2d(x * x, self.gamma, self.beta)
        # x / sqrt, not x * rsqrt: ONNX has no Rsqrt, and Sqrt + Div is one pass over the tensor fewer than
        # Sqrt + Reciprocal + Mul.
        return x * torch.sqrt(norm) if self.inverse else x / torch.sqrt(norm)


def _plain_conv(m: MaskedConv2d) -> nn.Conv2d:
    conv = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding)  # type: ignore[arg-type]
    with torch.no_grad():
        conv.weight.copy_(m.masked_weight())
        assert conv.bias is not None and m.bias is not None
        conv.bias.copy_(m.bias)
    return conv


def foldable_copy(model: CompressionModel) -> CompressionModel:
    """A copy of the model with GDNs and masked convolutions replaced by their constant-weight forms."""
    folded = copy.deepcopy(model).cpu().float().eval()
    for parent in list(folded.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, GDN):
                setattr(parent, name, FoldedGDN(child))
            elif isinstance(child, MaskedConv2d):
                setattr(parent, name, _plain_conv(child))
    return folded


class EntropyParameters(nn.Module):
    """The entropy-parameter network with its two inputs named, so callers never rely on concat order."""

    def __init__(self, entropy_parameters: nn.Module):
        super().__init__()
        self.net = entropy_parameters

    def forward(self, params: Tensor, ctx: Tensor) -> Tensor:
        return self.net(torch.cat((params, ctx), dim=1))


Graphs = dict[str, tuple[nn.Module, tuple[Tensor, ...], list[str]]]


def submodule(model: nn.Module, name: str) -> nn.Module | None:
    """The transform called `name` (g_a, h_a, ...), found where the model's `graph_paths` says (CompressAI's
    latent-codec models keep h_a and h_s under latent_codec.hyper), or None if it has none."""
    path = dict(getattr(model, "graph_paths", {})).get(name, name)
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def graph_modules(model: CompressionModel) -> Graphs:
    """name -> (module, example inputs, input names) for every graph of this architecture."""
    folded: Any = foldable_copy(model)
    x = torch.rand(1, 3, 128, 192)
    out: Graphs = {}
    with torch.no_grad():
        y = folded.g_a(x)
        out["g_a"] = (folded.g_a, (x,), ["x"])
        out["g_s"] = (folded.g_s, (y,), ["y_hat"])
        h_a, h_s = submodule(folded, "h_a"), submodule(folded, "h_s")
        if h_a is not None and h_s is not None:
            z = h_a(y)
            out["h_a"] = (h_a, (y,), ["y"])
            out["h_s"] = (h_s, (z,), ["z_hat"])
            if hasattr(folded, "context_graphs"):
                out.update(folded.context_graphs(torch.round(y), h_s(z)))
            elif hasattr(folded, "context_prediction"):
                # Both are fully convolutional: one graph serves the whole latent or a 5x5 crop of it.
                params, ctx = folded.h_s(z), folded.context_prediction(y)
                out["context_prediction"] = (folded.context_prediction, (y,), ["y_hat"])
                # Wavefront coding (format 2) asks for the context at a batch of positions at once: the same
                # convolution without padding, fed each position's k x k neighbourhood.
                unpadded = copy.deepcopy(folded.context_prediction)
                unpadded.padding = (0, 0)
                crops = neighbourhoods(torch.round(y), folded.context_size)
                out["context_prediction_wavefront"] = (unpadded, (crops,), ["neighbourhoods"])
                out["entropy_parameters"] = (
                    EntropyParameters(folded.entropy_parameters),
                    (params, ctx),
                    ["params", "ctx"],
                )
    return out


def neighbourhoods(y_hat: Tensor, k: int = 5) -> Tensor:
    """(1, M, H, W) -> the k x k neighbourhood of every position, zero beyond the edges: (H * W, M, k, k) in
    raster order, what context_prediction_wavefront takes (a wavefront's positions are some of these rows)."""
    m, h, w = y_hat.shape[1:]
    cols = F.unfold(y_hat, k, padding=k // 2)  # (1, M * k * k, H * W)
    return cols[0].t().reshape(h * w, m, k, k)


def _dynamic_axes(names: list[str]) -> dict[str, dict[int, str]]:
    axes = {n: {0: "batch", 2: f"{n}_h", 3: f"{n}_w"} for n in names}
    axes["out"] = {0: "batch", 2: "out_h", 3: "out_w"}
    return axes


def entry_metadata(entry: EntryId, fingerprint: bytes) -> dict[str, Any]:
    """What metadata.json says about the weights the graphs came from: `zoo export` and the ONNX model
    archives write it, and a loader compares `weights_fingerprint` with the weights it pairs them with."""
    e = entry
    return {
        "entry": {"arch": e.arch, "quality": e.quality, "metric": e.metric, "version": e.version},
        "weights_fingerprint": fingerprint.hex(),
        # a variable-rate entry's levels share one fingerprint: the graphs hold the level they were folded at
        "level": e.level,
    }


def export_graphs(
    model: CompressionModel,
    out_dir: str | Path,
    formats: tuple[str, ...] = ("onnx",),
    metadata: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Write each graph as <name>.onnx and/or <name>.pt (TorchScript) plus metadata.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    graphs = graph_modules(model)
    rewritten: dict[str, int] = {}
    if "onnx" in formats:
        import onnx  # the [export] extra; TorchScript alone does not need it

        from zoo.export.rewrite import split_transposed_convs
    for name, (module, inputs, input_names) in graphs.items():
        if "onnx" in formats:
            path = out / f"{name}.onnx"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    module,
                    inputs,
                    str(path),
                    input_names=input_names,
                    output_names=["out"],
                    dynamic_axes=_dynamic_axes(input_names),
                    opset_version=OPSET,
                    do_constant_folding=True,
                    dynamo=False,
                )
            graph = onnx.load(str(path))
            if count := split_transposed_convs(graph):
                rewritten[name] = count
                onnx.save(graph, str(path))
            written[f"{name}.onnx"] = path
        if "torchscript" in formats:
            path = out / f"{name}.pt"
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                traced = torch.jit.trace(module, inputs, check_trace=False)
            traced.save(str(path))
            written[f"{name}.pt"] = path
    meta = {
        "graphs": sorted({p.stem for p in written.values()}),
        "formats": list(formats),
        "opset": OPSET,
        "size_rule": f"input height and width must be multiples of {model.downsample} (zoo pads them)",
        "inputs": {n: names for n, (_, _, names) in graphs.items()},
        "output": "every graph has one output, named out",
        "entropy_parameters_precision": "zoo computes h_s and the context model in float64 when coding",
    }
    if "onnx" in formats:
        meta["onnx_rewrites"] = {
            "polyphase_transposed_convs": rewritten,
            "how": (
                "transposed convolutions with at least 16 output channels are stored as one stride-1 Conv per "
                "output phase; the phases are interleaved by Concat + DepthToSpace (DCR), or, where only per-pixel "
                "ops lead to a narrow transposed convolution, that layer reads each phase (one ConvTranspose per "
                "phase, added by Sum). The same function, faster in ONNX Runtime (zoo/export/rewrite.py)"
            ),
        }
    if hasattr(model, "context_graphs"):
        meta["context_model"] = model.context_model_doc
    elif "context_prediction" in graphs:
        meta["context_model"] = (
            "context_prediction: y_hat (the graph zero-pads it; causal mask folded) -> ctx with 2*M channels; "
            "entropy_parameters: (params from h_s, ctx) -> scales then means, concatenated on channels. Coding "
            "runs them over the partly decoded y_hat one wavefront at a time (the positions with 3h + w = t, "
            "bitstream format 2; raster order in format 1); at one position, context_prediction of the 5x5 crop "
            "centred there gives ctx at the crop's centre. context_prediction_wavefront is the same convolution "
            "without padding: the 5x5 neighbourhoods of a wavefront's K positions (K, M, 5, 5), zero outside the "
            "latent and at positions not decoded yet, give their ctx (K, 2*M, 1, 1) in one call, and "
            "entropy_parameters takes (K, 2*M, 1, 1) params and ctx"
        )
    meta.update(metadata or {})
    (out / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
    written["metadata.json"] = out / "metadata.json"
    return written
