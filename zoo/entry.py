"""Zoo entries on disk: `config.json` + `model.safetensors` + `README.md` (the model card).

That folder is the whole contract between training and loading, and it is exactly a Hub model repo.
Loading uses safetensors only (nothing is unpickled) and loads weights strictly. This module holds the config's
schema and the weights' I/O; the model card is written by `zoo.card`, codecs are made from entries by
`zoo.entry_codec`.
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
from packaging.version import InvalidVersion, Version
from safetensors import safe_open
from safetensors.torch import save_file

from zoo import untrusted
from zoo.card import model_card
from zoo.compressed import EntryId
from zoo.errors import ArchitectureError, EntryNotFound, InputError, IntegrityError
from zoo.models.base import CompressionModel
from zoo.registry import METRICS, check_shapes, create_model, get_arch, load_weights

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
ENTRY_FILES = (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME)
ENTRY_FORMAT = 1


def version_key(version: str) -> Version:
    """The one ordering of entry versions (PEP 440: "1.10" > "1.9" > "1.0" > "1.0rc1" == "1.0-rc1"): the
    resolver, the mirror, `zoo list` and the release tools all sort with it."""
    try:
        return Version(str(version))
    except InvalidVersion:
        raise EntryNotFound(f"{version!r} is not a version number (e.g. 1.0, 1.1, 2.0rc1)") from None


@dataclass(frozen=True)
class EntryInfo:
    entry: EntryId
    widths: dict[str, Any]  # ints, and the architecture's structure keys (ELIC's channel groups, a list)
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
    widths: dict[str, Any] = {k: int(getattr(model, k)) for k in spec.width_keys}
    widths.update({k: list(getattr(model, k)) for k in spec.structure_keys})  # ELIC's channel groups
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


MAX_CONFIG_BYTES = 1 << 20
WEIGHTS_DTYPES = ("float32", "float16")


def check_config(cfg: Any) -> EntryInfo:
    """An entry's config.json, parsed and checked: the one place that says what a valid config holds.

    Names are checked against the registry (architecture, its quality table, metrics, its width keys and
    bounds); a value that is out of range raises IntegrityError saying which and what was expected. Keys
    this zoo does not know are ignored. Quality 0 marks an entry outside the standard table (an import)."""
    from zoo.bitstream import FORMAT_VERSION

    if not isinstance(cfg, dict):
        raise IntegrityError(f"the config is a JSON {type(cfg).__name__}, not an object")
    if cfg.get("zoo_entry_format", ENTRY_FORMAT) != ENTRY_FORMAT:
        raise IntegrityError(f"zoo_entry_format {cfg['zoo_entry_format']!r} is not {ENTRY_FORMAT}: a newer zoo made it")
    spec = get_arch(cfg["architecture"])
    quality = cfg["quality"]
    if spec.variable_rate:
        if quality != 0 or isinstance(quality, bool):
            raise IntegrityError(f"quality {quality!r}: a variable-rate entry ({spec.name}) has quality 0")
    elif isinstance(quality, bool) or not isinstance(quality, int) or (quality != 0 and quality not in spec.qualities):
        raise IntegrityError(
            f"quality {quality!r} is not one of {spec.name}'s ({', '.join(map(str, spec.qualities))}, "
            "or 0 for an entry outside the standard table)"
        )
    if cfg["metric"] not in METRICS:
        raise IntegrityError(f"metric {cfg['metric']!r} is not one of {', '.join(METRICS)}")
    version = str(cfg["version"])
    try:
        version_key(version)
    except EntryNotFound as exc:
        raise IntegrityError(str(exc)) from None
    levels = cfg.get("levels", {})
    if spec.variable_rate:
        # One λ per level, from the architecture's own table of levels; no single λ.
        if cfg["lambda"] is not None:
            raise IntegrityError(f"lambda {cfg['lambda']!r}: a variable-rate entry has one per level, under levels")
        lmbda = None
        if not isinstance(levels, dict) or set(levels) != {str(q) for q in spec.qualities}:
            raise IntegrityError(f"levels must give each of {spec.name}'s levels {list(spec.qualities)}")
        for level, values in levels.items():
            if not isinstance(values, dict) or not _non_negative(values.get("lambda")):
                raise IntegrityError(f"level {level} has no finite non-negative lambda")
    else:
        if levels:
            raise IntegrityError(f"levels: {spec.name} is fixed-rate")
        if not _non_negative(cfg["lambda"]):
            raise IntegrityError(f"lambda {cfg['lambda']!r} is not a finite non-negative number")
        lmbda = float(cfg["lambda"])
    try:
        widths = spec.check_widths(cfg["widths"])
    except ArchitectureError as exc:
        raise IntegrityError(str(exc)) from None
    dtype = cfg.get("weights_dtype", "float32")
    if dtype not in WEIGHTS_DTYPES:
        raise IntegrityError(f"weights_dtype {dtype!r} is not one of {', '.join(WEIGHTS_DTYPES)}")
    fingerprint = bytes.fromhex(cfg["weights_fingerprint"])
    if len(fingerprint) != 16:
        raise IntegrityError(f"weights_fingerprint has {len(fingerprint)} bytes, not 16")
    bitstream_format = cfg["bitstream_format"]
    if isinstance(bitstream_format, bool) or bitstream_format not in range(1, FORMAT_VERSION + 1):
        raise IntegrityError(
            f"bitstream_format {bitstream_format!r} is not one this zoo writes (1 to {FORMAT_VERSION})"
        )
    training, results = cfg.get("training", {}), cfg.get("results", {})
    if not isinstance(training, dict) or not isinstance(results, dict):
        raise IntegrityError("training and results must be JSON objects")
    return EntryInfo(
        entry=EntryId(spec.name, quality, cfg["metric"], version),
        widths=widths,
        lmbda=lmbda,
        levels=dict(levels),
        fingerprint=fingerprint,
        bitstream_format=bitstream_format,
        weights_dtype=dtype,
        training=training,
        results=results,
    )


def _non_negative(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def read_config(path: str | Path) -> EntryInfo:
    p = Path(path) / CONFIG_NAME
    try:
        with untrusted.open_regular(p) as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise EntryNotFound(f"{path} is not a zoo entry: it has no {CONFIG_NAME}") from None
    except OSError as exc:  # a folder named config.json, no permission, ...
        raise IntegrityError(f"{p} is not a readable file ({exc.strerror or type(exc).__name__})") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise IntegrityError(f"{p} is over {MAX_CONFIG_BYTES} bytes: not a zoo entry config")
    try:
        return check_config(untrusted.parse_json(raw, str(p)))
    except IntegrityError as exc:
        if str(exc).startswith(str(p)):
            raise

        raise IntegrityError(f"{p}: {exc}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise IntegrityError(f"{p} is not a valid zoo entry config ({type(exc).__name__}: {exc})") from None


def check_device(device: str | torch.device) -> torch.device:
    """The device to load onto, refused with InputError when this machine does not have it."""
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise InputError(f"unknown device {device!r} ({exc})") from None
    if d.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (d.index or 0) >= count:
            raise InputError(f"device {device!r} is not available: this machine has {count} CUDA device(s)")
    elif d.type == "mps":
        if not torch.backends.mps.is_available():
            raise InputError(f"device {device!r} is not available on this machine")
    elif d.type != "cpu":
        raise InputError(f"device {device!r} is not supported: use cpu, cuda[:N] or mps")
    return d


def _read_entry(path: str | Path) -> tuple[CompressionModel, dict[str, torch.Tensor], EntryInfo]:
    """An untrained model of the entry's architecture and widths, the entry's tensors as stored, and its config.

    The config is checked first (widths within bounds), then every tensor's name and shape against the
    architecture at the config's widths, before any weight is read; then the fingerprint."""
    info = read_config(path)
    weights = Path(path) / WEIGHTS_NAME
    _check_weights_header(weights, info)
    try:
        with safe_open(str(weights), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("architecture", info.entry.arch) != info.entry.arch:
                raise IntegrityError(f"{weights} holds {meta.get('architecture')}, config says {info.entry.arch}")
            model = create_model(info.entry.arch, **info.widths)  # widths bounded by read_config
            try:
                check_shapes(model, {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()})  # noqa: SIM118
            except ArchitectureError as exc:
                raise IntegrityError(f"{weights}: {exc}") from None
            sd = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except FileNotFoundError:
        raise EntryNotFound(f"{path} has no {WEIGHTS_NAME}") from None
    except IntegrityError:
        raise
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise IntegrityError(f"{weights} is not a readable safetensors file: {exc}") from None
    if weights_fingerprint(sd) != info.fingerprint:
        raise IntegrityError(f"{weights} does not match the weights fingerprint in {CONFIG_NAME}")
    return model, sd, info


def _check_weights_header(weights: Path, info: EntryInfo) -> None:
    """The tensors the weights file declares (its header, read without the data) against the model the config
    describes, built on the meta device: a config cannot make us build more than the file holds."""
    try:
        header = untrusted.safetensors_header(weights)
    except FileNotFoundError:
        raise EntryNotFound(f"{weights.parent} has no {WEIGHTS_NAME}") from None
    with torch.device("meta"):
        described = create_model(info.entry.arch, **info.widths)  # widths bounded by read_config
    untrusted.check_fits(described, header, info.weights_dtype, str(weights))


def entry_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], EntryInfo]:
    """The entry's tensors exactly as stored (fp16 weights of a half-precision entry stay fp16, its
    single-element constants float32), verified like `load_entry`: what a training run can warm-start from."""
    _, sd, info = _read_entry(path)
    return sd, info


def load_entry(path: str | Path, device: str | torch.device = "cpu") -> tuple[CompressionModel, EntryInfo]:
    """Model (eval mode, tables in place) and its config; the weights must match the config's fingerprint."""
    device = check_device(device)
    model, sd, info = _read_entry(path)
    weights = Path(path) / WEIGHTS_NAME
    sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
    try:
        load_weights(model, sd)
    except ArchitectureError as exc:
        raise IntegrityError(f"{weights}: {exc}") from None
    if not model.has_tables:
        raise IntegrityError(f"{weights} has no CDF tables")
    untrusted.check_tables(model, str(weights))
    return model.to(device).eval(), info
