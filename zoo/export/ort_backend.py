"""ONNX Runtime backend: the same model object, with g_a, h_a and g_s running in onnxruntime.

The entropy-parameter path (h_s, and the context step of autoregressive models) stays in the canonical
float64 PyTorch computation of `CompressionModel.entropy_params`, so streams are interchangeable with the
eager backend: the same table indexes and the same means, hence bit-identical y_hat on both sides.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from zoo.errors import ZooError
from zoo.models.base import CompressionModel

ORT_GRAPHS = ("g_a", "h_a", "g_s")


def default_providers() -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


class OrtModule(nn.Module):
    """Runs one exported graph; called like the nn.Module it replaces."""

    def __init__(self, path: str | Path, providers: list[str] | None = None, threads: int | None = None):
        super().__init__()
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), opts, providers=providers or default_providers())
        self.input_name = self.session.get_inputs()[0].name
        self.path = str(path)

    def forward(self, x: Tensor) -> Tensor:
        arr = x.detach().to("cpu", torch.float32).contiguous().numpy()
        (out,) = self.session.run(None, {self.input_name: arr})
        return torch.from_numpy(np.asarray(out)).to(x.device)


def to_onnx_backend(
    model: CompressionModel,
    *,
    cache_dir: str | Path | None = None,
    providers: list[str] | None = None,
    threads: int | None = None,
) -> CompressionModel:
    """A copy of `model` whose heavy transforms run in ONNX Runtime (exported to `cache_dir`, or a
    temporary folder)."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise ZooError("the onnx backend needs onnxruntime: pip install 'zoo-codecs[export]'") from None
    from zoo.export.graphs import export_graphs

    folder = Path(cache_dir) if cache_dir else Path(tempfile.mkdtemp(prefix="zoo-onnx-"))
    export_graphs(model, folder, ("onnx",))
    ort_model = copy.deepcopy(model).cpu().eval()
    if hasattr(ort_model, "h_s"):
        ort_model.f64("h_s")  # build the float64 entropy-parameter copy from the eager weights first
    for name in ORT_GRAPHS:
        if hasattr(ort_model, name):
            setattr(ort_model, name, OrtModule(folder / f"{name}.onnx", providers, threads))
    ort_model.backend = "onnx"  # type: ignore[assignment]
    return ort_model
