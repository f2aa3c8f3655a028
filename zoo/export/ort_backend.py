"""ONNX Runtime backend: the same model object, with g_a, h_a and g_s running in onnxruntime.

The entropy-parameter path (h_s, and the context step of autoregressive models) stays in the canonical
float64 PyTorch computation of `CompressionModel.entropy_params`, so streams are interchangeable with the
eager backend: the same table indexes and the same means, hence bit-identical y_hat on both sides.
"""

from __future__ import annotations

import copy
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from zoo.errors import ZooError
from zoo.models.base import CompressionModel
from zoo.models.google import JointAutoregressiveHierarchicalPriors

ORT_GRAPHS = ("g_a", "h_a", "g_s")


def runtime_conflict() -> str | None:
    """A notice when both ONNX Runtime builds are installed: they share the `onnxruntime` module and the CPU
    build shadows the CUDA one, so the GPU is silently unused. The extras [export] and [gpu] exclude each other."""
    from importlib import metadata

    installed = []
    for dist in ("onnxruntime", "onnxruntime-gpu"):
        try:
            metadata.distribution(dist)
        except metadata.PackageNotFoundError:
            continue
        installed.append(dist)
    if len(installed) < 2:
        return None
    return (
        "both onnxruntime and onnxruntime-gpu are installed and the CPU build shadows the CUDA one; keep one: "
        "pip uninstall -y onnxruntime onnxruntime-gpu && pip install 'zoo-codecs[gpu]' (or [export] for CPU)"
    )


def default_providers() -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if "CUDAExecutionProvider" not in available and torch.cuda.is_available():
        notice = runtime_conflict()
        if notice:
            warnings.warn(notice, stacklevel=2)
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


class _Float64Out(nn.Module):
    """An ORT graph called where zoo's float64 networks are: float32 in, float64 out. The eager networks of
    several inputs take them concatenated on channels; the graphs take them named, so a single concatenated
    tensor is split by the graph's input widths (static in every exported graph)."""

    def __init__(self, module: OrtModule):
        super().__init__()
        self.session = module.session
        self.names = [i.name for i in self.session.get_inputs()]
        self.widths = [int(i.shape[1]) for i in self.session.get_inputs()]

    def forward(self, *xs: Tensor) -> Tensor:
        if len(xs) == 1 and len(self.names) > 1:
            xs = xs[0].split(self.widths, dim=1)
        feeds = {
            n: x.detach().to("cpu", torch.float32).contiguous().numpy() for n, x in zip(self.names, xs, strict=True)
        }
        (out,) = self.session.run(None, feeds)
        return torch.from_numpy(np.asarray(out)).to(xs[0].device, torch.float64)


def onnx_everywhere(
    model: CompressionModel,
    folder: str | Path,
    *,
    providers: list[str] | None = None,
    threads: int | None = None,
) -> CompressionModel:
    """Every exported graph in ONNX Runtime, h_s and the context graphs included, in float32: NOT a backend to
    code with (its table indexes may differ from the eager decoder's), but the one that measures that risk.
    Streams it makes carry its index checksum, so an eager decoder that computes other indexes must refuse.

    Coding with it runs no torch network: ORT graphs and the native coder only. mbt2018 and cheng2020 call
    context_prediction + entropy_parameters per position in raster order (format 1) and
    context_prediction_wavefront + entropy_parameters per wavefront (format 2); the checkerboard and ELIC
    models call their context graphs per pass and channel group."""
    from zoo.errors import EntryNotFound
    from zoo.export.graphs import submodule

    folder = Path(folder)
    ort_model = onnx_backend_from_folder(model, folder, providers=providers, threads=threads)
    paths = dict(getattr(model, "graph_paths", {}))
    # Where the model's coding loops ask for a float64 network (`f64(path)`), they get the graph instead: h_s,
    # and the context networks of the models that call them by path (checkerboard, ELIC).
    by_path_names = [n for n in ("h_s", *paths) if n not in ORT_GRAPHS and submodule(model, n) is not None]
    autoregressive = isinstance(model, JointAutoregressiveHierarchicalPriors)
    step_names = ("context_prediction", "context_prediction_wavefront", "entropy_parameters") if autoregressive else ()
    missing = [f"{n}.onnx" for n in (*by_path_names, *step_names) if not (folder / f"{n}.onnx").is_file()]
    if missing:  # e.g. a folder exported before context_prediction_wavefront existed
        raise EntryNotFound(f"{folder} has no {', '.join(missing)}: export the graphs again (zoo export)")

    def graph(name: str) -> _Float64Out:
        return _Float64Out(OrtModule(folder / f"{name}.onnx", providers, threads))

    by_path: dict[str, nn.Module] = {paths.get(n, n): graph(n) for n in dict.fromkeys(by_path_names)}
    eager_f64 = model.f64
    object.__setattr__(ort_model, "f64", lambda name: by_path[name] if name in by_path else eager_f64(name))
    if isinstance(model, JointAutoregressiveHierarchicalPriors):  # the instance attributes shadow the methods
        context, wavefront, entropy_parameters = (graph(n) for n in step_names)
        p = model.context_size // 2

        def context_step(y_crop: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
            # The graph zero-pads the 5x5 crop itself; its centre output is the context at this position.
            ctx = context(y_crop)[:, :, p : p + 1, p : p + 1]
            scales, means = entropy_parameters(params, ctx).flatten(1).chunk(2, 1)
            return scales, means

        object.__setattr__(ort_model, "context_step", context_step)
        object.__setattr__(ort_model, "wavefront_graphs", (wavefront, entropy_parameters))
    ort_model.backend = "onnx-everywhere"  # type: ignore[assignment]
    return ort_model
