"""Released entries: the pinned manifest, downloads through `huggingface_hub`, and integrity checks.

`zoo.load(name, quality=...)` resolves (arch, quality, metric, version) through `zoo/manifest.json`, fetches
the entry's files at the pinned revision with `hf_hub_download` (so HF_ENDPOINT, HF_HUB_OFFLINE,
HF_HUB_CACHE, tokens and progress bars behave as usual), checks each file's sha256 itself, and builds a
Codec. The same code talks to huggingface.co or to a mirror such as `zoo hub serve`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from zoo import net
from zoo.compressed import EntryId
from zoo.entry import (
    CARD_NAME,
    CONFIG_NAME,
    ENTRY_FILES,
    MAX_CONFIG_BYTES,
    WEIGHTS_NAME,
    check_device,
    codec_from_entry,
    sha256_file,
    version_key,
)
from zoo.errors import BitstreamError, EntryNotFound, HubError, IntegrityError
from zoo.registry import ARCHITECTURES, METRICS, get_arch

HF_PREFIX = "hf-hub:"


@dataclass(frozen=True)
class ManifestEntry:
    arch: str
    quality: int
    metric: str
    version: str
    repo: str
    revision: str
    files: dict[str, str]  # file name -> sha256
    kodak: dict[str, float] = field(default_factory=dict)
    path: str = ""  # where the released folder lives in this repository (model_store/entries/...)
    # Set when the entry is retired: its folder left the working tree, and this commit of the repository holds
    # its files at `path` (the embedded mirror serves them from there; see model_store/README.md).
    commit: str = ""
    # variable-rate entries: level -> Kodak figures, and the integer qualities of the base architecture for
    # which this entry is the current one (what `zoo.load(base, quality=q)` returns)
    levels: dict[str, dict[str, float]] = field(default_factory=dict)
    current_for: list[int] = field(default_factory=list)

    @property
    def name(self) -> str:
        if self.quality == 0:
            return f"{self.arch}@{self.version}"
        return f"{self.arch}/q{self.quality}-{self.metric}@{self.version}"


@dataclass(frozen=True)
class Resolved:
    """A manifest entry and, for a variable-rate one, the level to run it at."""

    entry: ManifestEntry
    level: float | None = None


def load_manifest(path: str | Path | None = None) -> list[ManifestEntry]:
    """Released entries: the package's manifest, or the file named by ZOO_MANIFEST (an internal zoo)."""
    path = path or os.environ.get("ZOO_MANIFEST") or None
    text = Path(path).read_text() if path else resources.files("zoo").joinpath("manifest.json").read_text()
    data = json.loads(text)
    return [ManifestEntry(**e) for e in data.get("entries", [])]


def manifest_path() -> Path:
    return Path(str(resources.files("zoo").joinpath("manifest.json")))


def resolve_point(
    arch: str,
    quality: float | None = None,
    metric: str = "mse",
    version: str | None = None,
    manifest: list[ManifestEntry] | None = None,
) -> Resolved:
    """What `zoo.load(arch, quality=...)` runs: for a fixed-rate architecture without a pinned version, the
    variable-rate entry the manifest marks current for that quality (at that level) if there is one, else the
    newest fixed-rate entry; for a variable-rate architecture, its entry at the level `quality`."""
    spec = get_arch(arch)
    entries = manifest if manifest is not None else load_manifest()
    if spec.variable_rate:
        if quality is None:
            raise EntryNotFound(f"{arch} needs a quality: any level in [1, 8]")
        level = spec.check_level(quality)
        if metric not in METRICS:
            raise EntryNotFound(f"unknown metric {metric!r}; metrics are {', '.join(METRICS)}")
        matching = [e for e in entries if e.arch == arch and e.metric == metric]
        if not matching:
            raise EntryNotFound(f"no released {arch} entry ({metric})")
        return Resolved(_pick_version(matching, version, f"{arch} {metric}"), level)
    if version is None and quality is not None and metric in METRICS and int(quality) == quality:
        current = [
            e for e in entries if e.metric == metric and int(quality) in e.current_for and get_arch(e.arch).base == arch
        ]
        if current:
            return Resolved(max(current, key=lambda e: version_key(e.version)), float(quality))
    return Resolved(resolve(arch, quality, metric, version, manifest=entries))  # type: ignore[arg-type]


def _pick_version(matching: list[ManifestEntry], version: str | None, what: str) -> ManifestEntry:
    if version is None:
        return max(matching, key=lambda e: version_key(e.version))
    for e in matching:
        if e.version == str(version):
            return e
    raise EntryNotFound(
        f"{what} has no version {version}; versions: "
        + ", ".join(sorted((e.version for e in matching), key=version_key))
    )


def resolve(
    arch: str,
    quality: int | None = None,
    metric: str = "mse",
    version: str | None = None,
    manifest: list[ManifestEntry] | None = None,
) -> ManifestEntry:
    """The fixed-rate manifest entry for a name, or EntryNotFound saying what exists."""
    spec = get_arch(arch)
    if metric not in METRICS:
        raise EntryNotFound(f"unknown metric {metric!r}; metrics are {', '.join(METRICS)}")
    entries = [e for e in (manifest if manifest is not None else load_manifest()) if e.arch == arch]
    if quality is None:
        raise EntryNotFound(f"{arch} needs a quality: {', '.join(map(str, spec.qualities))}")
    spec.check_quality(quality)
    released = sorted({(e.quality, e.metric) for e in entries})
    matching = [e for e in entries if e.quality == quality and e.metric == metric]
    if not matching:
        have = ", ".join(f"q{q}-{m}" for q, m in released) or "none yet"
        raise EntryNotFound(f"no released entry for {arch} quality {quality} ({metric}); released: {have}")
    return _pick_version(matching, version, f"{arch} q{quality} {metric}")


@dataclass(frozen=True)
class Served:
    """A name `zoo.load` answers and what it runs: `zoo.load(arch, quality=quality, metric=metric)` gives
    `point`. `quality` is None for a variable-rate architecture, which answers every level of one entry."""

    arch: str
    quality: int | None
    metric: str
    point: Resolved


def served(arch: str | None = None, manifest: list[ManifestEntry] | None = None) -> list[Served]:
    """Every (architecture, quality, metric) that `zoo.load` answers without a pinned version, with the entry it
    resolves to today, found by `resolve_point` as loading finds it; `arch` narrows to one architecture."""
    entries = manifest if manifest is not None else load_manifest()
    names = [get_arch(arch).name] if arch is not None else list(ARCHITECTURES)
    points = []
    for name in names:
        spec = get_arch(name)
        for metric in METRICS:
            # A variable-rate architecture's entry does not depend on the level: ask at its lowest one.
            qualities: list[int | None] = [None] if spec.variable_rate else list(spec.qualities)
            for q in qualities:
                try:
                    point = resolve_point(name, q if q is not None else spec.qualities[0], metric, manifest=entries)
                except EntryNotFound:  # nothing released under that name
                    continue
                points.append(Served(name, q, metric, point if q is not None else Resolved(point.entry)))
    return points


def _endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def _remove_cached(path: str) -> None:
    """Delete a downloaded file and the blob behind its snapshot link, so a retry downloads again."""
    p = Path(path)
    blob = p.resolve()
    for target in (p, blob):
        try:
            target.unlink()
        except OSError:
            pass


DEFAULT_HUB_TIMEOUT = net.DEFAULT_READ_TIMEOUT
# The most bytes each entry file may declare before it is downloaded: a config is read only up to
# MAX_CONFIG_BYTES, a model card is text, and weights at twice the largest standard widths are ~400 MB.
MAX_FILE_BYTES = {CONFIG_NAME: MAX_CONFIG_BYTES, CARD_NAME: 1 << 20, WEIGHTS_NAME: 1 << 30}


def hub_timeout() -> float:
    """Seconds to wait for the Hub to connect or answer (ZOO_HUB_TIMEOUT, default 10)."""
    return net.read_timeout()


def _status(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    code = getattr(response, "status_code", None)
    if code is None:
        return type(exc).__name__ or "error"
    reason = getattr(response, "reason_phrase", "") or ""
    return f"HTTP {code} {reason}".rstrip()


def _file_size(repo: str, name: str, revision: str) -> tuple[int | None, str]:
    """(the size the endpoint declares for a file, "") when it answers one HEAD request in time and without
    retries; (None, why not) when it does not or answers with a server error (5xx).

    huggingface_hub's own download retries a failed metadata request when nothing is cached, with a 60 s
    timeout and backoff (minutes against a server that accepts connections and never answers, ~25 s against
    a closed port or a server error). Asking once first bounds that: an endpoint that does not answer is not
    used for this entry, and the cache answers instead (as huggingface_hub does offline). A refusal (4xx) is
    left to hf_hub_download, which reports it precisely."""
    from huggingface_hub import errors as hf_errors
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(repo, name, revision=revision, endpoint=_endpoint())
    transfer = net.Transfer(f"the Hub's answer for {repo}@{revision}/{name}", seconds=hub_timeout())
    try:
        meta = net.run_with_deadline(lambda: get_hf_file_metadata(url, timeout=hub_timeout()), transfer)
    except hf_errors.HfHubHTTPError as exc:
        status = _status(exc)
        return None, status if status.startswith("HTTP 5") else ""
    except HubError:
        return None, f"no answer within {hub_timeout():g} s"
    except Exception as exc:  # refused, timed out, TLS, proxy, offline mode: the types depend on the HTTP library
        return None, type(exc).__name__ or "error"
    return meta.size, ""


def _download_file(repo: str, name: str, revision: str, size: int | None, local_only: bool) -> str:
    """hf_hub_download of one file, given up on at the deadline for its declared size (`zoo.net`)."""
    from huggingface_hub import hf_hub_download

    def fetch() -> str:
        return hf_hub_download(
            repo,
            name,
            revision=revision,
            endpoint=_endpoint(),
            etag_timeout=hub_timeout(),
            local_files_only=local_only,
        )

    if local_only:
        # The cache only; huggingface_hub may still ask the endpoint for its own things (its agent registry,
        # a 3 s timeout per read), so this has a deadline too: the base allowance of every download.
        what = f"reading {repo}@{revision}/{name} from the cache"
        return net.run_with_deadline(fetch, net.Transfer(what, seconds=net.base_seconds()))
    limit = MAX_FILE_BYTES.get(name, MAX_FILE_BYTES[WEIGHTS_NAME])
    if size is not None and size > limit:
        raise HubError(
            f"{repo}@{revision}/{name} is {size} bytes on {_endpoint()}, more than an entry's {name} may be ({limit})"
        )
    return net.run_with_deadline(fetch, net.Transfer(f"downloading {repo}@{revision}/{name}", size or limit))


def download_entry(
    repo: str, revision: str, files: dict[str, str] | None = None, fingerprint: bytes | None = None
) -> Path:
    """Download an entry's files at a revision and verify their sha256 (when known); returns the folder.

    An endpoint that does not connect or answer within `hub_timeout()`, or answers with a server error, fails
    in that time with a HubError naming it and what happened, unless the entry is in the local cache, which is
    then used. Each file's transfer has a deadline from its declared size (`zoo.net.deadline_for`).
    `fingerprint`: the weights a stream needs; the config (downloaded first) must name them, or BitstreamError
    is raised before the weights are downloaded."""
    import huggingface_hub.constants as hfc
    from huggingface_hub import errors as hf_errors

    folder: Path | None = None
    failure = "offline" if hfc.HF_HUB_OFFLINE else ""
    for name in ENTRY_FILES:
        size = None
        if not failure:
            size, failure = _file_size(repo, name, revision)
        try:
            local = _download_file(repo, name, revision, size, local_only=bool(failure))
        except hf_errors.LocalEntryNotFoundError:
            if hfc.HF_HUB_OFFLINE:
                raise HubError(
                    f"{repo}@{revision} is not in the local cache and the Hub cannot be used "
                    f"(offline mode); connect once or unset HF_HUB_OFFLINE"
                ) from None
            raise HubError(
                f"could not use the Hub at {_endpoint()} (HF_ENDPOINT; {failure}, timeout {hub_timeout():g} s) "
                f"and {repo}@{revision} is not in the local cache"
            ) from None
        except hf_errors.RevisionNotFoundError:
            raise EntryNotFound(f"{repo} has no revision {revision!r} on {_endpoint()}") from None
        except (hf_errors.RepositoryNotFoundError, hf_errors.GatedRepoError):
            raise EntryNotFound(f"repository {repo} was not found on {_endpoint()}") from None
        except hf_errors.EntryNotFoundError:
            raise EntryNotFound(f"{repo}@{revision} has no {name}: not a zoo entry") from None
        except hf_errors.HfHubHTTPError as exc:
            raise HubError(f"the Hub at {_endpoint()} refused {repo}@{revision}/{name}: {_status(exc)}") from None
        except HubError as exc:
            if failure:
                raise HubError(f"could not use the Hub at {_endpoint()} (HF_ENDPOINT; {failure}), and {exc}") from None
            raise
        except Exception as exc:  # connection errors and timeouts mid-download: their types depend on the HTTP library
            raise HubError(
                f"could not download {repo}@{revision}/{name} from the Hub at {_endpoint()} (HF_ENDPOINT): "
                f"{type(exc).__name__}"
            ) from None
        if files and name in files:
            digest = sha256_file(local)
            if digest != files[name]:
                _remove_cached(local)
                raise IntegrityError(
                    f"{repo}@{revision}/{name} has sha256 {digest[:16]}…, the manifest pins "
                    f"{files[name][:16]}…; the corrupt download was removed from the cache"
                )
        folder = Path(local).parent
        if name == CONFIG_NAME and fingerprint is not None:
            _check_fingerprint(folder, f"{repo}@{revision}", fingerprint)
    assert folder is not None
    return folder


def _check_fingerprint(folder: Path, name: str, fingerprint: bytes) -> None:
    """Refuse an entry whose config names other weights than a stream needs, before its weights are fetched."""
    from zoo.entry import read_config

    info = read_config(folder)
    if info.fingerprint[: len(fingerprint)] != fingerprint:  # format 3 keeps its first 8 bytes
        raise BitstreamError(
            f"the stream needs weights {fingerprint.hex()[:12]}, but {name} ({info.entry}) has weights "
            f"{info.fingerprint.hex()[:12]}: the stream was made with other weights or its header was edited"
        )


def download_manifest_entry(entry: ManifestEntry, fingerprint: bytes | None = None) -> Path:
    """A released entry's folder, downloaded at its pinned revision and checked against the manifest's sha256
    (and, given the `fingerprint` a stream needs, refused after its config when that names other weights)."""
    try:
        return download_entry(entry.repo, entry.revision, entry.files, fingerprint)
    except EntryNotFound as exc:
        if not entry.commit:
            raise
        raise EntryNotFound(
            f"{entry.name} is a retired entry and {_endpoint()} does not serve it ({exc}); "
            "`zoo hub serve` in a clone with full git history does (model_store/README.md)"
        ) from None


def parse_hf_name(name: str) -> tuple[str, str]:
    """ "hf-hub:org/repo@revision" -> (repo, revision); the revision defaults to "main"."""
    ref = name[len(HF_PREFIX) :]
    repo, _, revision = ref.partition("@")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise EntryNotFound(f"{name!r} is not of the form hf-hub:ORG/NAME[@REVISION]")
    return repo, revision or "main"


def load(
    name: str,
    quality: float | None = None,
    metric: str = "mse",
    version: str | None = None,
    device: str | torch.device = "cpu",
    backend: str = "torch",
    **codec_kwargs: Any,
):
    """A ready codec: a manifest entry by name, or any Hub repo as "hf-hub:org/repo@revision"."""
    check_device(device)  # before any download
    if name.startswith(HF_PREFIX):
        repo, revision = parse_hf_name(name)
        folder = download_entry(repo, revision)
    else:
        if name not in ARCHITECTURES and Path(name).is_dir():
            return load_local(name, device=device, backend=backend, **codec_kwargs)
        point = resolve_point(name, quality, metric, version)
        folder = download_manifest_entry(point.entry)
        return codec_from_entry(folder, device=device, backend=backend, level=point.level, **codec_kwargs)
    return codec_from_entry(folder, device=device, backend=backend, level=quality, **codec_kwargs)


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
    try:
        if entry.level is not None:
            point = resolve_point(entry.arch, entry.level, entry.metric, entry.version)
        else:
            point = Resolved(resolve(entry.arch, entry.quality, entry.metric, entry.version))
    except EntryNotFound as exc:
        name = str(entry) if len(str(entry)) <= 120 else str(entry)[:117] + "..."
        raise EntryNotFound(
            f"the stream was made by {name}, which is not a released entry ({exc}); a stream made with a "
            "local entry folder decodes with --model FOLDER (zoo.load_local(FOLDER) in Python)"
        ) from None
    released = point.entry
    folder = download_manifest_entry(released, fingerprint)
    return codec_from_entry(folder, device=device, backend=backend, level=point.level, **codec_kwargs)


def load_local(
    path: str | Path,
    device: str | torch.device = "cpu",
    backend: str = "torch",
    quality: float | None = None,
    **codec_kwargs: Any,
):
    """A ready codec from an entry folder on disk; `quality` picks the level of a variable-rate entry."""
    if not Path(path).is_dir():
        raise EntryNotFound(f"{path} is not an entry folder")
    return codec_from_entry(path, device=device, backend=backend, level=quality, **codec_kwargs)
