"""Released entries' files: downloads through `huggingface_hub`, and their integrity checks.

`zoo.load(name, quality=...)` resolves (arch, quality, metric, version) through the manifest (`zoo.manifest`),
then fetches the entry's files here at the pinned revision with `hf_hub_download` (so HF_ENDPOINT,
HF_HUB_OFFLINE, HF_HUB_CACHE, tokens and progress bars behave as usual) and checks each file's sha256 itself.
The same code talks to huggingface.co or to a mirror such as `zoo hub serve`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from zoo import net
from zoo.entry import CARD_NAME, CONFIG_NAME, ENTRY_FILES, MAX_CONFIG_BYTES, WEIGHTS_NAME, sha256_file
from zoo.errors import BitstreamError, EntryNotFound, HubError, IntegrityError
from zoo.manifest import Manifest, ManifestEntry, Resolved, package_manifest_path
from zoo.points import METRICS
from zoo.registry import ARCHITECTURES, get_arch


def load_manifest(path: str | Path | None = None) -> list[ManifestEntry]:
    """Released entries: the package's manifest, or the file named by ZOO_MANIFEST (an internal zoo)."""
    return Manifest.read(path).entries


def manifest_path() -> Path:
    return package_manifest_path()


def resolve_point(
    arch: str,
    quality: float | None = None,
    metric: str = "mse",
    version: str | None = None,
    manifest: Iterable[ManifestEntry] | None = None,
) -> Resolved:
    """What `zoo.load(arch, quality=...)` runs (`Manifest.resolve_point`), from the given entries or the manifest."""
    return _manifest(manifest).resolve_point(arch, quality, metric, version)


def resolve(
    arch: str,
    quality: int | None = None,
    metric: str = "mse",
    version: str | None = None,
    manifest: Iterable[ManifestEntry] | None = None,
) -> ManifestEntry:
    """The fixed-rate manifest entry for a name (`Manifest.resolve`), or EntryNotFound saying what exists."""
    return _manifest(manifest).resolve(arch, quality, metric, version)


def _manifest(entries: Iterable[ManifestEntry] | None) -> Manifest:
    if entries is None:
        return Manifest.read()
    return entries if isinstance(entries, Manifest) else Manifest(list(entries))


@dataclass(frozen=True)
class Served:
    """A name `zoo.load` answers and what it runs: `zoo.load(arch, quality=quality, metric=metric)` gives
    `point`. `quality` is None for a variable-rate architecture, which answers every level of one entry."""

    arch: str
    quality: int | None
    metric: str
    point: Resolved


def served(arch: str | None = None, manifest: Iterable[ManifestEntry] | None = None) -> list[Served]:
    """Every (architecture, quality, metric) that `zoo.load` answers without a pinned version, with the entry it
    resolves to today, found by `resolve_point` as loading finds it; `arch` narrows to one architecture."""
    entries = _manifest(manifest)
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
