"""Released entries' files: downloads through `huggingface_hub`, and their integrity checks.

`zoo.load(name, quality=...)` resolves (arch, quality, metric, version) through the manifest (`zoo.manifest`),
then fetches the entry's files here at the pinned revision with `hf_hub_download` (so HF_ENDPOINT,
HF_HUB_OFFLINE, HF_HUB_CACHE, tokens and progress bars behave as usual) and checks each file's sha256 itself.
The same code talks to huggingface.co or to a mirror such as `zoo hub serve`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from zoo.entry import ENTRY_FILES, sha256_file
from zoo.errors import EntryNotFound, HubError, IntegrityError
from zoo.manifest import Manifest, ManifestEntry, Resolved, package_manifest_path


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


DEFAULT_HUB_TIMEOUT = 10.0


def hub_timeout() -> float:
    """Seconds to wait for the Hub to connect or answer (ZOO_HUB_TIMEOUT, default 10)."""
    try:
        seconds = float(os.environ.get("ZOO_HUB_TIMEOUT", DEFAULT_HUB_TIMEOUT))
    except ValueError:
        raise HubError(f"ZOO_HUB_TIMEOUT={os.environ['ZOO_HUB_TIMEOUT']!r} is not a number of seconds") from None
    return seconds if seconds > 0 else DEFAULT_HUB_TIMEOUT


def _hub_answers(repo: str, name: str, revision: str) -> str:
    """Whether the endpoint answers one HEAD request within `hub_timeout()`, without retries.

    huggingface_hub's own download retries a failed metadata request when nothing is cached, with a 60 s
    timeout and backoff (minutes against a server that accepts connections and never answers, ~25 s against
    a closed port). Asking once first bounds that: an endpoint that does not answer is not used for this
    entry, and the cache answers instead (as huggingface_hub does offline). Returns "" when it answered,
    else why not (the exception's type name)."""
    from huggingface_hub import errors as hf_errors
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    try:
        get_hf_file_metadata(hf_hub_url(repo, name, revision=revision, endpoint=_endpoint()), timeout=hub_timeout())
    except hf_errors.HfHubHTTPError:
        return ""  # it answered; hf_hub_download reports the refusal precisely
    except Exception as exc:  # refused, timed out, TLS, proxy, offline mode: the types depend on the HTTP library
        return type(exc).__name__ or "error"
    return ""


def download_entry(repo: str, revision: str, files: dict[str, str] | None = None) -> Path:
    """Download an entry's files at a revision and verify their sha256 (when known); returns the folder.

    An endpoint that does not connect or answer within `hub_timeout()` fails in that time, with a HubError
    naming it, unless the entry is in the local cache, which is then used."""
    import huggingface_hub.constants as hfc
    from huggingface_hub import errors as hf_errors
    from huggingface_hub import hf_hub_download

    folder: Path | None = None
    failure = "offline" if hfc.HF_HUB_OFFLINE else _hub_answers(repo, ENTRY_FILES[0], revision)
    for name in ENTRY_FILES:
        try:
            local = hf_hub_download(
                repo,
                name,
                revision=revision,
                endpoint=_endpoint(),
                etag_timeout=hub_timeout(),
                local_files_only=bool(failure),
            )
        except hf_errors.LocalEntryNotFoundError:
            if hfc.HF_HUB_OFFLINE:
                raise HubError(
                    f"{repo}@{revision} is not in the local cache and the Hub cannot be used "
                    f"(offline mode); connect once or unset HF_HUB_OFFLINE"
                ) from None
            raise HubError(
                f"could not reach the Hub at {_endpoint()} (HF_ENDPOINT; {failure}, timeout {hub_timeout():g} s) "
                f"and {repo}@{revision} is not in the local cache"
            ) from None
        except hf_errors.RevisionNotFoundError:
            raise EntryNotFound(f"{repo} has no revision {revision!r} on {_endpoint()}") from None
        except (hf_errors.RepositoryNotFoundError, hf_errors.GatedRepoError):
            raise EntryNotFound(f"repository {repo} was not found on {_endpoint()}") from None
        except hf_errors.EntryNotFoundError:
            raise EntryNotFound(f"{repo}@{revision} has no {name}: not a zoo entry") from None
        except hf_errors.HfHubHTTPError as exc:
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise HubError(f"the Hub at {_endpoint()} refused {repo}@{revision}/{name}: {first}") from None
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
    assert folder is not None
    return folder


def download_manifest_entry(entry: ManifestEntry) -> Path:
    """A released entry's folder, downloaded at its pinned revision and checked against the manifest's sha256."""
    try:
        return download_entry(entry.repo, entry.revision, entry.files)
    except EntryNotFound as exc:
        if not entry.commit:
            raise
        raise EntryNotFound(
            f"{entry.name} is a retired entry and {_endpoint()} does not serve it ({exc}); "
            "`zoo hub serve` in a clone with full git history does (model_store/README.md)"
        ) from None
