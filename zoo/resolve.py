"""From what a user names as a model to a codec: the one resolver behind `zoo.load`, the CLI, evaluation,
export, serving and `zoo train --init`.

A model argument is a registry name (with quality, metric and version: the manifest picks the entry), an entry
folder (or the path of a released entry whose folder has left the working tree), a CompressAI-style checkpoint
file (with its architecture), or `hf-hub:ORG/NAME[@REVISION]`. A registry name is always a registry name, even
where a folder of that name exists (write `./NAME` for the folder).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from zoo.compressed import EntryId
from zoo.entry import EntryInfo, check_device, read_config
from zoo.entry_codec import codec_from_entry
from zoo.errors import EntryNotFound, InputError
from zoo.hub import download_entry, download_manifest_entry
from zoo.manifest import Manifest, ManifestEntry, Resolved
from zoo.registry import ARCHITECTURES, get_arch

if TYPE_CHECKING:
    from zoo.codec import Codec

HF_PREFIX = "hf-hub:"

ModelKind = Literal["release", "folder", "checkpoint", "hub"]


@dataclass(frozen=True)
class ModelSource:
    """A model argument resolved to files on this machine.

    `path` is the entry folder (downloaded and checked against the manifest for a release, downloaded for a Hub
    repository, as given for a folder) or the checkpoint file. `level` is the operating point passed to the
    codec: the level of a variable-rate entry, the quality a fixed-rate folder must have, or a checkpoint's
    label; None where the entry decides."""

    kind: ModelKind
    name: str
    path: Path
    level: float | None = None
    metric: str = "mse"
    release: ManifestEntry | None = None  # the manifest line of a registry name
    arch: str | None = None  # a checkpoint's architecture (an entry's is in its config)

    @property
    def info(self) -> EntryInfo:
        """The entry's config (not for a checkpoint, which has none)."""
        if self.kind == "checkpoint":
            raise InputError(f"{self.name} is a checkpoint, not an entry: it has no config")
        return read_config(self.path)

    def codec(self, device: str | torch.device = "cpu", backend: str = "torch", **codec_kwargs: Any) -> Codec:
        if self.kind == "checkpoint":
            return _checkpoint_codec(self, device, backend, **codec_kwargs)
        return codec_from_entry(self.path, device=device, backend=backend, level=self.level, **codec_kwargs)


def parse_hf_name(name: str) -> tuple[str, str]:
    """ "hf-hub:org/repo@revision" -> (repo, revision); the revision defaults to "main"."""
    ref = name[len(HF_PREFIX) :]
    repo, _, revision = ref.partition("@")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise InputError(f"{name!r} is not of the form hf-hub:ORG/NAME[@REVISION]")
    return repo, revision or "main"


def resolve_model(
    model: str | Path,
    quality: float | None = None,
    metric: str = "mse",
    version: str | None = None,
    arch: str | None = None,
) -> ModelSource:
    """The files a model argument names, downloaded where it names a release or a Hub repository."""
    name = str(model)
    if name.startswith(HF_PREFIX):
        repo, revision = parse_hf_name(name)
        return ModelSource("hub", name, download_entry(repo, revision), quality, metric)
    if name in ARCHITECTURES:
        point = Manifest.read().resolve_point(name, quality, metric, version)
        return ModelSource("release", name, download_manifest_entry(point.entry), point.level, metric, point.entry)
    path = Path(name)
    if path.is_dir():
        return ModelSource("folder", name, path, quality, metric)
    if path.is_file():
        return ModelSource("checkpoint", name, path, quality, metric, arch=arch)
    if len(path.parts) > 1:  # a released entry's path whose folder has left the working tree
        from zoo.mirror import entry_folder

        return ModelSource("folder", name, entry_folder(path), quality, metric)
    get_arch(name)  # EntryNotFound naming the architectures there are
    raise AssertionError("unreachable: every registry name is resolved above")


def load(
    name: str | Path,
    quality: float | None = None,
    metric: str = "mse",
    version: str | None = None,
    device: str | torch.device = "cpu",
    backend: str = "torch",
    arch: str | None = None,
    **codec_kwargs: Any,
) -> Codec:
    """A ready codec for any model argument (`zoo.load`); the device is checked before anything is downloaded."""
    check_device(device)
    return resolve_model(name, quality, metric, version, arch).codec(device, backend, **codec_kwargs)


def load_local(
    path: str | Path,
    device: str | torch.device = "cpu",
    backend: str = "torch",
    quality: float | None = None,
    **codec_kwargs: Any,
) -> Codec:
    """A ready codec from an entry folder on disk; `quality` picks the level of a variable-rate entry."""
    if not Path(path).is_dir():
        raise EntryNotFound(f"{path} is not an entry folder")
    return ModelSource("folder", str(path), Path(path), quality).codec(device, backend, **codec_kwargs)


def load_released(
    entry: EntryId,
    device: str | torch.device = "cpu",
    backend: str = "torch",
    fingerprint: bytes | None = None,
    **codec_kwargs: Any,
):
    """The released codec that made a stream, found from the stream's header through the registry and the
    manifest only: a header's strings are never taken as paths. A stream made with a local entry folder
    (or a checkpoint) names no released entry; its error says to pass that folder explicitly. A variable-rate
    stream names its entry and level. With the stream's weights `fingerprint`, an entry whose config names
    other weights is refused (BitstreamError) before its weights are downloaded."""
    check_device(device)
    manifest = Manifest.read()
    try:
        if entry.level is not None:
            point = manifest.resolve_point(entry.arch, entry.level, entry.metric, entry.version)
        else:
            point = Resolved(manifest.resolve(entry.arch, entry.quality, entry.metric, entry.version))
    except (EntryNotFound, InputError) as exc:  # a header's level or version that names nothing released
        name = str(entry) if len(str(entry)) <= 120 else str(entry)[:117] + "..."
        raise EntryNotFound(
            f"the stream was made by {name}, which is not a released entry ({exc}); a stream made with a "
            "local entry folder decodes with --model FOLDER (zoo.load_local(FOLDER) in Python)"
        ) from None
    folder = download_manifest_entry(point.entry, fingerprint)
    return codec_from_entry(folder, device=device, backend=backend, level=point.level, **codec_kwargs)


def _checkpoint_codec(source: ModelSource, device: str | torch.device, backend: str, **codec_kwargs: Any) -> Codec:
    """A codec of a CompressAI-style checkpoint: tables computed if it has none, labelled with the quality given
    and the file's name as its version."""
    from zoo.codec import Codec
    from zoo.entry import weights_fingerprint
    from zoo.registry import model_from_state_dict, state_dict_from_checkpoint

    if not source.arch:
        raise InputError(
            f"{source.name} is a checkpoint file: give its architecture (--arch), or import it as an entry first "
            "(zoo import-compressai)"
        )
    if backend != "torch":
        raise InputError(f"a checkpoint runs on the torch backend only, not {backend!r}: import it as an entry")
    model = model_from_state_dict(source.arch, state_dict_from_checkpoint(source.path))
    if not model.has_tables:
        model.update(force=True)
    entry = EntryId(source.arch, int(source.level or 0), source.metric, source.path.stem)
    fingerprint = weights_fingerprint(model.state_dict())
    return Codec(model.to(check_device(device)).eval(), entry, fingerprint, **codec_kwargs)
