"""CompressAI's checkpoints as zoo entries: its published weights by name (the URL table CompressAI itself uses,
verified against the hash in each file name and cached under $ZOO_HOME), and local checkpoint files.

The table lives in `zoo/data/compressai_models.json` with its source and licence. Nothing is unpickled: a
checkpoint is read with a weights-only `torch.load`, renamed to the current layout, and saved as safetensors.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from zoo.compressed import EntryId
from zoo.entry import EntryInfo, read_config, save_entry, sha256_file
from zoo.entry_codec import codec_from_entry
from zoo.errors import ArchitectureError, EntryNotFound, HubError, InputError, IntegrityError
from zoo.models.base import CompressionModel
from zoo.net import download
from zoo.registry import METRICS, create_model, get_arch, infer_widths, load_checkpoint, load_weights

TABLE_ENV = "ZOO_COMPRESSAI_MODELS"  # another table file (an internal mirror with files of its own)
URL_ENV = "ZOO_COMPRESSAI_URL"  # replaces the table's root_url (a mirror of CompressAI's files)
# A download may take at most the Hub timeout plus its size at this rate: a server that trickles bytes just
# often enough to beat the read timeout still ends. The largest published checkpoint is about 100 MB.
MAX_CHECKPOINT_BYTES = 1 << 30
# The version of every entry made from a published checkpoint: what a stream's header names, so that `zoo decode`
# finds these weights again (`is_published_entry`) rather than a released zoo entry of the same name.
ENTRY_VERSION = "1.0+compressai"
# torch.hub's convention, which CompressAI's file names follow: the hex digits after the last "-" before the
# extension are the start of the file's sha256.
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[^-]*$")


@dataclass(frozen=True)
class Published:
    """One checkpoint CompressAI publishes: which model it is and its file name under the table's root URL."""

    arch: str
    quality: int
    metric: str
    filename: str

    @property
    def hash_prefix(self) -> str:
        match = _HASH_IN_NAME.search(self.filename)
        if not match:
            raise IntegrityError(f"{self.filename} carries no sha256 prefix in its name")
        return match.group(1)

    @property
    def url(self) -> str:
        return f"{base_url()}/{self.filename}"


def load_table() -> dict[str, Any]:
    """The table of published checkpoints: the package's, or the file named by ZOO_COMPRESSAI_MODELS."""
    path = os.environ.get(TABLE_ENV)
    if path:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise EntryNotFound(f"{TABLE_ENV}={path}: {exc.strerror or exc}") from None
    else:
        text = resources.files("zoo").joinpath("data/compressai_models.json").read_text()
    try:
        table = json.loads(text)
        if not isinstance(table["models"], dict) or not isinstance(table["root_url"], str):
            raise TypeError("models must be an object and root_url a string")
    except (ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(f"the CompressAI model table {path or '(package)'} is not valid: {exc}") from None
    return table


def base_url(table: dict[str, Any] | None = None) -> str:
    url = os.environ.get(URL_ENV) or (table or load_table())["root_url"]
    if not url.startswith(("http://", "https://")):
        raise HubError(f"{URL_ENV}={url!r} is not an http:// or https:// URL")
    return url.rstrip("/")


def published(arch: str, quality: float | None, metric: str = "mse") -> Published:
    """The published checkpoint for a name, or EntryNotFound saying what CompressAI publishes."""
    spec = get_arch(arch)
    models = load_table()["models"]
    if arch not in models:
        raise EntryNotFound(f"CompressAI publishes no weights for {arch}; it does for {', '.join(models)}")
    if metric not in METRICS:
        raise EntryNotFound(f"unknown metric {metric!r}; metrics are {', '.join(METRICS)}")
    files = models[arch].get(metric, {})
    have = ", ".join(sorted(files, key=int)) or "none"
    if quality is None:
        raise InputError(f"{arch} needs a quality: CompressAI publishes it ({metric}) at qualities {have}")
    if isinstance(quality, float) and quality.is_integer():
        quality = int(quality)
    if isinstance(quality, bool) or str(quality) not in files:
        raise EntryNotFound(f"CompressAI publishes {arch} ({metric}) at qualities {have}, not {quality}")
    spec.check_quality(quality)
    return Published(arch, int(quality), metric, files[str(quality)])


def cache_dir() -> Path:
    from zoo.procs import zoo_home

    return zoo_home() / "compressai"


def fetch(model: Published, folder: Path) -> tuple[Path, str]:
    """Download a published checkpoint into `folder` and check the sha256 prefix in its name; returns the file
    and its full sha256. A mismatch deletes the file and raises IntegrityError."""
    url = model.url
    path = folder / Path(model.filename).name
    download(url, path, max_bytes=MAX_CHECKPOINT_BYTES)  # the Hub's timeouts and deadlines (zoo.net)
    digest = sha256_file(path)
    if not digest.startswith(model.hash_prefix):
        path.unlink(missing_ok=True)
        raise IntegrityError(
            f"{url} has sha256 {digest[:16]}…, but its name promises {model.hash_prefix}…; the download was removed"
        )
    return path, digest


# CompressAI's older checkpoints name the factorized prior's parameters `_biases.0` or `_bias0` (now
# `biases.0`) and a strided residual block's shortcut `downsample` (now `skip`); its own loader renames them.
_LEGACY_PRIOR = re.compile(r"(entropy_bottleneck)\._(biases\.|bias|matrices\.|matrix|factors\.|factor)(\d+)$")
_PLURAL = {"bias": "biases", "matrix": "matrices", "factor": "factors"}


def current_key(key: str) -> str:
    """A CompressAI state-dict key in the layout of its current release (which is the zoo's)."""
    key = key.removeprefix("module.").replace(".downsample.", ".skip.")
    match = _LEGACY_PRIOR.search(key)
    if match:
        stem = match.group(2).rstrip(".")
        key = f"{key[: match.start()]}{match.group(1)}.{_PLURAL.get(stem, stem)}.{match.group(3)}"
    return key


def model_from_checkpoint(arch: str, path: str | Path) -> CompressionModel:
    """A CompressAI checkpoint (a state dict, or train.py's {"state_dict": ...}) in the zoo's architecture.

    Keys are renamed to the current layout; buffers the checkpoint lacks that are fixed at construction or
    computed from the weights (bounds, the scale table, the CDF tables) take the architecture's own, and the
    tables are rebuilt when the entry is saved. Every parameter must be there, with its shape."""
    state, _ = load_checkpoint(path)
    state = {current_key(k): v for k, v in state.items()}
    model = create_model(arch, **infer_widths(arch, state))
    parameters = {name for name, _ in model.named_parameters()}
    for name, value in model.state_dict().items():
        if name not in state and name not in parameters:
            state[name] = value
    return load_weights(model, state)


def import_checkpoint(
    path: str | Path,
    arch: str,
    out: str | Path,
    quality: int = 0,
    metric: str = "mse",
    version: str = "1.0",
    training: dict[str, Any] | None = None,
) -> EntryInfo:
    """Write a CompressAI checkpoint file as an entry folder (quality 0: outside the standard table)."""
    spec = get_arch(arch)
    if quality:
        spec.check_quality(quality)
    model = model_from_checkpoint(arch, path)
    return save_entry(
        model,
        out,
        arch=arch,
        quality=quality,
        metric=metric,
        version=version,
        lmbda=spec.lmbda(quality, metric) if quality else 0.0,
        training=training or {"source": f"imported from CompressAI checkpoint {Path(path).name}"},
    )


def entry_folder(arch: str, quality: float | None, metric: str = "mse") -> Path:
    """The entry made from CompressAI's published checkpoint for this name: from the cache under $ZOO_HOME,
    else downloaded, verified and converted into it (the checkpoint itself is not kept)."""
    model = published(arch, quality, metric)
    table = load_table()
    target = cache_dir() / "entries" / arch / f"q{model.quality}-{metric}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    work = target.parent / f".{target.name}.{secrets.token_hex(4)}.tmp"
    work.mkdir()
    try:
        checkpoint, digest = fetch(model, work)
        source = table.get("source", {})
        licence = table.get("license", {})
        training = {
            "source": "CompressAI's published pretrained weights",
            "url": model.url,
            "sha256": digest,
            "origin": f"{source.get('repository', '?')} ({source.get('commit', '?')[:12]})",
            "license": licence.get("hf_id", "unknown"),
            "license_terms": licence.get("weights", "unknown"),
            "dataset": "vimeo90k",
            "notes": table.get("training", ""),
        }
        try:
            import_checkpoint(
                checkpoint,
                arch,
                work / "entry",
                quality=model.quality,
                metric=metric,
                version=ENTRY_VERSION,
                training=training,
            )
        except ArchitectureError as exc:
            raise IntegrityError(f"{model.url} does not hold {arch}: {exc}") from None
        checkpoint.unlink()
        try:
            (work / "entry").rename(target)
        except OSError:  # another process cached it first: theirs is the same entry
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    read_config(target)
    return target


def is_published_entry(entry: EntryId) -> bool:
    """Whether a stream's header names an entry made from CompressAI's published weights."""
    return entry.version == ENTRY_VERSION and entry.level is None


def load(
    arch: str,
    quality: float | None = None,
    metric: str = "mse",
    device: str | torch.device = "cpu",
    backend: str = "torch",
    **codec_kwargs: Any,
):
    """A ready codec on CompressAI's published weights: `zoo.load(arch, quality=q, source="compressai")`."""
    from zoo.entry import check_device

    check_device(device)  # before any download
    return codec_from_entry(entry_folder(arch, quality, metric), device=device, backend=backend, **codec_kwargs)
