"""Zoo entries on disk: `config.json` + `model.safetensors` + `README.md` (the model card).

That folder is the whole contract between training and loading, and it is exactly a Hub model repo.
Loading uses safetensors only (nothing is unpickled) and loads weights strictly.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from zoo.compressed import EntryId
from zoo.errors import ArchitectureError, EntryNotFound, InputError, IntegrityError
from zoo.models.base import CompressionModel
from zoo.registry import get_arch, model_from_state_dict

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
ENTRY_FILES = (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME)
ENTRY_FORMAT = 1


@dataclass(frozen=True)
class EntryInfo:
    entry: EntryId
    widths: dict[str, int]
    lmbda: float | None  # None for a variable-rate entry: each level has its own (see `levels`)
    fingerprint: bytes
    bitstream_format: int
    weights_dtype: str = "float32"
    training: dict[str, Any] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    # variable-rate entries: level ("1".."8") -> {"lambda": λ, "kodak": {"bpp", "psnr", "ms_ssim"}}
    levels: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def variable_rate(self) -> bool:
        return get_arch(self.entry.arch).variable_rate

    def config(self) -> dict[str, Any]:
        return {
            "zoo_entry_format": ENTRY_FORMAT,
            "architecture": self.entry.arch,
            "quality": self.entry.quality,
            "metric": self.entry.metric,
            "version": self.entry.version,
            "lambda": self.lmbda,
            "widths": self.widths,
            "weights_dtype": self.weights_dtype,
            "weights_fingerprint": self.fingerprint.hex(),
            "bitstream_format": self.bitstream_format,
            "training": self.training,
            "results": self.results,
            **({"levels": self.levels} if self.levels else {}),
        }


def weights_fingerprint(state_dict: Mapping[str, torch.Tensor]) -> bytes:
    """16 bytes identifying the exact weights and tables: sha256 over names, dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.digest()[:16]


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _shipped_state_dict(model: CompressionModel, half: bool) -> dict[str, torch.Tensor]:
    """The state dict as it will be stored, with CDF tables computed from exactly those weights
    (on a copy: the caller's model is left as it was)."""
    model = copy.deepcopy(model).cpu()
    if half:
        # Round the weights to fp16 first, then compute the tables from the rounded weights, so the
        # tables a decoder gets are those of the weights it runs.
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.half().float())
    model.update(force=True)
    sd = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu().contiguous()
        sd[k] = v.half() if half and v.is_floating_point() and v.numel() > 1 else v
    return sd


def save_entry(
    model: CompressionModel,
    out_dir: str | Path,
    *,
    arch: str,
    quality: int,
    metric: str = "mse",
    version: str = "1.0",
    lmbda: float | None = None,
    training: dict[str, Any] | None = None,
    eval_results: dict[str, Any] | None = None,
    half: bool = False,
    levels: dict[str, dict[str, Any]] | None = None,
) -> EntryInfo:
    """Write an entry folder. Tables are (re)computed from the weights exactly as shipped.

    A variable-rate entry has quality 0 and no single λ; `levels` gives each integer level's λ and, once
    evaluated, its Kodak figures (the default: the λ ladder alone)."""
    from zoo.bitstream import FORMAT_VERSION

    spec = get_arch(arch)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sd = _shipped_state_dict(model, half)
    widths = {k: int(getattr(model, k)) for k in spec.width_keys}
    if spec.variable_rate:
        quality, lmbda = 0, None
        levels = levels or {str(q): {"lambda": spec.lmbda(q, metric)} for q in spec.qualities}
    elif lmbda is None:
        lmbda = spec.lmbda(quality, metric)
    info = EntryInfo(
        entry=EntryId(arch, int(quality), metric, str(version)),
        widths=widths,
        lmbda=None if lmbda is None else float(lmbda),
        levels=dict(levels or {}),
        fingerprint=weights_fingerprint(sd),
        bitstream_format=FORMAT_VERSION,
        weights_dtype="float16" if half else "float32",
        training=dict(training or {}),
        results=dict(eval_results or {}),
    )
    save_file(
        sd,
        str(out / WEIGHTS_NAME),
        metadata={"architecture": arch, "format": "pt", "zoo_entry": str(info.entry)},
    )
    (out / CONFIG_NAME).write_text(json.dumps(info.config(), indent=2, sort_keys=True) + "\n")
    (out / CARD_NAME).write_text(model_card(info))
    return info


def read_config(path: str | Path) -> EntryInfo:
    p = Path(path) / CONFIG_NAME
    try:
        cfg = json.loads(p.read_text())
        info = EntryInfo(
            entry=EntryId(cfg["architecture"], int(cfg["quality"]), cfg["metric"], str(cfg["version"])),
            widths={k: int(v) for k, v in cfg["widths"].items()},
            lmbda=None if cfg["lambda"] is None else float(cfg["lambda"]),
            levels=dict(cfg.get("levels", {})),
            fingerprint=bytes.fromhex(cfg["weights_fingerprint"]),
            bitstream_format=int(cfg["bitstream_format"]),
            weights_dtype=cfg.get("weights_dtype", "float32"),
            training=cfg.get("training", {}),
            results=cfg.get("results", {}),
        )
    except FileNotFoundError:
        raise EntryNotFound(f"{path} is not a zoo entry: it has no {CONFIG_NAME}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise IntegrityError(f"{p} is not a valid zoo entry config ({type(exc).__name__}: {exc})") from None
    get_arch(info.entry.arch)
    return info


def load_entry(path: str | Path, device: str | torch.device = "cpu") -> tuple[CompressionModel, EntryInfo]:
    """Model (eval mode, tables in place) and its config; the weights must match the config's fingerprint."""
    info = read_config(path)
    weights = Path(path) / WEIGHTS_NAME
    try:
        with safe_open(str(weights), framework="pt") as f:
            meta = f.metadata() or {}
            sd = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except FileNotFoundError:
        raise EntryNotFound(f"{path} has no {WEIGHTS_NAME}") from None
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise IntegrityError(f"{weights} is not a readable safetensors file: {exc}") from None
    if meta.get("architecture", info.entry.arch) != info.entry.arch:
        raise IntegrityError(f"{weights} holds {meta.get('architecture')}, config says {info.entry.arch}")
    if weights_fingerprint(sd) != info.fingerprint:
        raise IntegrityError(f"{weights} does not match the weights fingerprint in {CONFIG_NAME}")
    sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
    try:
        model = model_from_state_dict(info.entry.arch, sd)
    except ArchitectureError as exc:
        raise IntegrityError(str(exc)) from None
    if not model.has_tables:
        raise IntegrityError(f"{weights} has no CDF tables")
    return model.to(device).eval(), info


def codec_from_entry(
    path: str | Path,
    device: str | torch.device = "cpu",
    backend: str = "torch",
    ort_threads: int | None = None,
    level: float | None = None,
    **codec_kwargs,
):
    """A ready `zoo.codec.Codec` for an entry folder. `ort_threads`: ONNX Runtime's intra-op threads for the
    onnx backend (default: ONNX Runtime's own choice, one per core). `level`: the operating point of a
    variable-rate entry, in [1, 8]; the codec runs the standard model that level folds into."""
    from zoo.codec import Codec

    if backend not in ("torch", "onnx"):
        raise EntryNotFound(f"unknown backend {backend!r}; backends are torch, onnx")
    if ort_threads is not None and (backend != "onnx" or ort_threads < 1):
        raise InputError(f"ort_threads={ort_threads} needs backend='onnx' and a count of at least 1")
    model, info = load_entry(path, device)
    entry = info.entry
    if info.variable_rate:
        if level is None:
            raise EntryNotFound(f"{entry.arch} is variable-rate: give a quality (level) in [1, 8]")
        level = get_arch(entry.arch).check_level(level)
        model = model.fold(level)  # type: ignore[operator]
        entry = EntryId(entry.arch, entry.quality, entry.metric, entry.version, level)
    elif level is not None and level != entry.quality:
        raise EntryNotFound(f"{path} is the fixed-rate entry {entry}: it has no level {level}")
    if backend == "onnx":
        from zoo.export.ort_backend import to_onnx_backend  # type: ignore[import-not-found]

        model = to_onnx_backend(model, threads=ort_threads)
    return Codec(model, entry, info.fingerprint, **codec_kwargs)


def _fmt(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, float) and math.isfinite(value) else str(value)


def model_card(info: EntryInfo) -> str:
    """Hub model card: YAML front matter (library, tags, licence, datasets, model-index) and a summary."""
    if info.variable_rate:
        return _variable_rate_card(info)
    e = info.entry
    spec = get_arch(e.arch)
    kodak = info.results.get("kodak", {})
    lines = [
        "---",
        "library_name: zoo",
        "license: apache-2.0",
        "pipeline_tag: image-to-image",
        "tags:",
        "- learned-image-compression",
        "- image-compression",
        f"- {e.arch}",
        f"- {e.metric}",
        "datasets:",
        f"- {info.training.get('dataset', 'unknown')}",
        "model-index:",
        f"- name: {e.arch}-q{e.quality}-{e.metric}",
        "  results:",
        "  - task:",
        "      type: image-compression",
        "      name: Image compression",
        "    dataset:",
        "      type: kodak",
        "      name: Kodak PhotoCD (24 images)",
        "    metrics:",
    ]
    for key, name in (("bpp", "bpp"), ("psnr", "PSNR-RGB (dB)"), ("ms_ssim", "MS-SSIM-RGB")):
        if key in kodak:
            lines += [f"    - type: {key}", f"      name: {name}", f"      value: {_fmt(kodak[key])}"]
    if not any(k in kodak for k in ("bpp", "psnr", "ms_ssim")):
        lines += ["    - type: bpp", "      name: bpp (not evaluated)", "      value: null"]
    lines += ["---", "", f"# {e.arch} · quality {e.quality} · {e.metric} · v{e.version}", ""]
    lines += [
        f"{spec.title}, trained with λ = {info.lmbda} ({'λ·255²·MSE' if e.metric == 'mse' else 'λ·(1−MS-SSIM)'}"
        " + bpp). Load it with:",
        "",
        "```python",
        "import zoo",
        f'codec = zoo.load("{e.arch}", quality={e.quality}, metric="{e.metric}", version="{e.version}")',
        "```",
        "",
        f"Widths: {info.widths}. Weights: {info.weights_dtype}; the integer CDF tables were computed from the "
        "weights exactly as stored. Weights fingerprint: " + info.fingerprint.hex() + ".",
        "",
    ]
    if info.training:
        lines += ["## Training", ""] + [f"- {k}: {v}" for k, v in sorted(info.training.items())] + [""]
    if kodak:
        lines += ["## Kodak results", "", "| bpp | PSNR-RGB (dB) | MS-SSIM-RGB |", "| --- | --- | --- |"]
        lines += [
            f"| {_fmt(kodak.get('bpp'))} | {_fmt(kodak.get('psnr'), 2)} | {_fmt(kodak.get('ms_ssim'))} |",
            "",
        ]
        if "source" in kodak:
            lines += [f"Measured with `{kodak['source']}`.", ""]
    return "\n".join(lines)


def _variable_rate_card(info: EntryInfo) -> str:
    """Model card of a variable-rate entry: one model-index result per level, and a table of them."""
    e = info.entry
    spec = get_arch(e.arch)
    lines = [
        "---",
        "library_name: zoo",
        "license: apache-2.0",
        "pipeline_tag: image-to-image",
        "tags:",
        "- learned-image-compression",
        "- image-compression",
        "- variable-rate",
        f"- {e.arch}",
        f"- {spec.base}",
        f"- {e.metric}",
        "datasets:",
        f"- {info.training.get('dataset', 'unknown')}",
        "model-index:",
        f"- name: {e.arch}-{e.metric}",
        "  results:",
    ]
    for level, point in sorted(info.levels.items(), key=lambda kv: float(kv[0])):
        kodak = point.get("kodak", {})
        if not kodak:
            continue
        lines += [
            "  - task:",
            "      type: image-compression",
            f"      name: Image compression at level {level}",
            "    dataset:",
            "      type: kodak",
            "      name: Kodak PhotoCD (24 images)",
            "    metrics:",
        ]
        for key, name in (("bpp", "bpp"), ("psnr", "PSNR-RGB (dB)"), ("ms_ssim", "MS-SSIM-RGB")):
            if key in kodak:
                lines += [f"    - type: {key}", f"      name: {name}", f"      value: {_fmt(kodak[key])}"]
    if not any(p.get("kodak") for p in info.levels.values()):
        lines += ["  - task:", "      type: image-compression", "    metrics:", "    - type: bpp", "      value: null"]
    lines += ["---", "", f"# {e.arch} · every quality · {e.metric} · v{e.version}", ""]
    lines += [
        f"{spec.title}: one network for every quality level in [1, 8]. Integer levels were trained at the "
        f"standard λ table ({'λ·255²·MSE' if e.metric == 'mse' else 'λ·(1−MS-SSIM)'} + bpp); fractional "
        "levels interpolate the per-channel gains in log space. Each level folds exactly into a standard "
        f"`{spec.base}` model of the same widths, which is what codes the images. Load a level with:",
        "",
        "```python",
        "import zoo",
        f'codec = zoo.load("{e.arch}", quality=3.5, metric="{e.metric}", version="{e.version}")',
        "```",
        "",
        f"Widths: {info.widths}. Weights: {info.weights_dtype}; the integer CDF tables were computed from the "
        "weights exactly as stored. Weights fingerprint: " + info.fingerprint.hex() + ".",
        "",
    ]
    if info.training:
        lines += ["## Training", ""] + [f"- {k}: {v}" for k, v in sorted(info.training.items())] + [""]
    rows = [(lv, p) for lv, p in sorted(info.levels.items(), key=lambda kv: float(kv[0])) if p.get("kodak")]
    if rows:
        lines += [
            "## Kodak results per level",
            "",
            "| level | λ | bpp | PSNR-RGB (dB) | MS-SSIM-RGB |",
            "| --- | --- | --- | --- | --- |",
        ]
        for level, point in rows:
            k = point["kodak"]
            lines.append(
                f"| {level} | {point.get('lambda')} | {_fmt(k.get('bpp'))} | {_fmt(k.get('psnr'), 2)} | "
                f"{_fmt(k.get('ms_ssim'))} |"
            )
        lines.append("")
    return "\n".join(lines)
