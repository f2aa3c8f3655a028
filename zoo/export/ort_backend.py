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
        # Between graphs the coder and torch's float64 entropy parameters run: ORT's pool must not spin on
        # the cores they need once its own run is over.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
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
    """A copy of `model` whose heavy transforms run in ONNX Runtime, exported now to `cache_dir` (kept, for
    `onnx_backend_from_folder` to reuse) or to a temporary folder removed before returning."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise ZooError("the onnx backend needs onnxruntime: pip install 'zoo-codecs[export]'") from None
    from zoo.export.graphs import export_graphs

    if cache_dir:
        export_graphs(model, cache_dir, ("onnx",))
        return onnx_backend_from_folder(model, cache_dir, providers=providers, threads=threads)
    # Sessions hold their graphs in memory once built, so the files are not needed afterwards.
    with tempfile.TemporaryDirectory(prefix="zoo-onnx-") as tmp:
        export_graphs(model, tmp, ("onnx",))
        return onnx_backend_from_folder(model, tmp, providers=providers, threads=threads)


def onnx_backend_from_folder(
    model: CompressionModel,
    folder: str | Path,
    *,
    providers: list[str] | None = None,
    threads: int | None = None,
) -> CompressionModel:
    """Like `to_onnx_backend`, from graphs that `export_graphs` already wrote to `folder` (e.g. the ones a
    model archive carries): nothing is exported, so a server worker starts without running torch.onnx.

    The graphs must have been exported from `model`'s weights; callers check that against the
    `weights_fingerprint` in the folder's metadata.json."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise ZooError("the onnx backend needs onnxruntime: pip install 'zoo-codecs[export]'") from None
    from zoo.errors import EntryNotFound
    from zoo.export.graphs import submodule

    folder = Path(folder)
    names = [name for name in ORT_GRAPHS if submodule(model, name) is not None]
    missing = [f"{name}.onnx" for name in names if not (folder / f"{name}.onnx").is_file()]
    if missing:
        raise EntryNotFound(f"{folder} has no {', '.join(missing)}: export the graphs first (zoo export)")
    ort_model = copy.deepcopy(model).cpu().eval()
    if hasattr(ort_model, "h_s"):
        ort_model.f64("h_s")  # build the float64 entropy-parameter copy from the eager weights first
    for name in names:
        parent, _, attr = dict(getattr(model, "graph_paths", {})).get(name, name).rpartition(".")
        setattr(ort_model.get_submodule(parent), attr, OrtModule(folder / f"{name}.onnx", providers, threads))
    ort_model.backend = "onnx"  # type: ignore[assignment]
    return ort_model
