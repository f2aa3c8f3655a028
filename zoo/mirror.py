"""The embedded Hub mirror: built from the manifest (a retired entry's files read from the git commit its line
names), served by olah. Publishing is `zoo.publish`, retiring `zoo.retire`.

A mirror is a folder of git repositories laid out as `DIR/models/ORG/NAME`, one commit and tag per entry
version; `olah` (PyPI) serves it over the Hub's HTTP protocol in offline mode, so `huggingface_hub`
with HF_ENDPOINT pointing at it downloads exactly as it would from huggingface.co.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from zoo.entry import ENTRY_FILES, sha256_file, version_key
from zoo.errors import EntryNotFound, HubError, IntegrityError
from zoo.manifest import Manifest, ManifestEntry
from zoo.procs import executable, free_port, pid_alive, start_process, stop_group, wait_for_port, zoo_home
from zoo.publish import publish_to_mirror

ENTRIES_PREFIX = "model_store/entries"
DEFAULT_ENTRIES = Path(ENTRIES_PREFIX)  # relative to the current folder


def entries_folder(entries_dir: str | Path | None = None) -> Path:
    """The folder `zoo hub serve` reads released entries from: the given one, or `model_store/entries` in the
    current folder (a checkout's root). The manifest itself always comes from the installed package."""
    return Path(entries_dir) if entries_dir is not None else DEFAULT_ENTRIES


def _entry_subpath(e: ManifestEntry) -> PurePosixPath:
    """Where an entry lives below an entries folder: its manifest path without `model_store/entries/`."""
    path = PurePosixPath(e.path)
    try:
        return path.relative_to(ENTRIES_PREFIX)
    except ValueError:
        return PurePosixPath(e.arch, f"q{e.quality}-{e.metric}", f"v{e.version}")


def _git_root(folder: Path) -> Path | None:
    """The work tree of the git repository holding `folder` (or its nearest existing parent), if any."""
    probe = folder.resolve()
    while not probe.exists():
        probe = probe.parent
    proc = subprocess.run(["git", "-C", str(probe), "rev-parse", "--show-toplevel"], capture_output=True, text=True)
    return Path(proc.stdout.strip()) if proc.returncode == 0 and proc.stdout.strip() else None


def _history_unavailable(e: ManifestEntry, why: str) -> EntryNotFound:
    return EntryNotFound(
        f"{e.name} is retired (its files left the working tree; commit {e.commit[:12]} holds them) and {why}: "
        "files encoded with it decode only through a mirror built from a clone with full git history "
        "(`git fetch --unshallow` in a shallow clone; an installed wheel carries no history)"
    )


def read_from_history(e: ManifestEntry, repo_root: Path | None, out_dir: Path) -> Path:
    """Write a retired entry's files, read from the commit its manifest line names, into `out_dir`.

    EntryNotFound naming the entry when there is no repository or the commit is not in it (shallow clone)."""
    if not e.commit:
        raise EntryNotFound(f"{e.name} is not in the entries folder and its manifest line names no commit")
    if not re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", e.commit):
        raise EntryNotFound(f"{e.name} names {e.commit!r} as its commit: expected a full commit id")
    if repo_root is None:
        raise _history_unavailable(e, "the entries folder is not in a git repository")
    path = PurePosixPath(e.path)
    if path.is_absolute() or ".." in path.parts:
        raise EntryNotFound(f"{e.name} has a path outside the repository: {e.path!r}")
    out_dir.mkdir(parents=True, exist_ok=True)
    for fname in e.files:
        if fname not in ENTRY_FILES:
            raise EntryNotFound(f"{e.name} lists {fname!r}, which is not an entry file")
        proc = subprocess.run(
            ["git", "-C", str(repo_root), "cat-file", "blob", f"{e.commit}:{path / fname}"], capture_output=True
        )
        if proc.returncode != 0:
            raise _history_unavailable(e, f"{repo_root} has no {path / fname} at that commit")
        (out_dir / fname).write_bytes(proc.stdout)
    return out_dir


@dataclass(frozen=True)
class MirrorBuild:
    """What `build_mirror` published, and the retired entries it could not (no history to read them from)."""

    published: list[str]
    from_history: list[str]
    unavailable: list[EntryNotFound]


def build_mirror(
    mirror_dir: str | Path, entries: list[ManifestEntry] | None = None, entries_dir: str | Path | None = None
) -> MirrorBuild:
    """(Re)build a mirror folder with every version the manifest lists: from the entries folder, or for a
    retired entry (absent there) from the git commit its manifest line names. Files are checked against
    the manifest's sha256 either way; zoo.load checks them again after download."""
    mirror = Path(mirror_dir)
    if mirror.exists():
        shutil.rmtree(mirror)
    mirror.mkdir(parents=True)
    source = entries_folder(entries_dir)
    entries = Manifest.read().entries if entries is None else entries
    published: list[str] = []
    from_history: list[str] = []
    unavailable: list[EntryNotFound] = []
    repo_root: Path | None = None
    looked_up = False  # the repository is looked up once, when the first retired entry needs it
    with tempfile.TemporaryDirectory() as tmp:
        for i, e in enumerate(sorted(entries, key=lambda e: (e.repo, version_key(e.version)))):
            folder = source / _entry_subpath(e)
            if not folder.is_dir():
                if not looked_up:
                    repo_root, looked_up = _git_root(source), True
                try:
                    folder = read_from_history(e, repo_root, Path(tmp) / str(i))
                except EntryNotFound as exc:
                    unavailable.append(exc)
                    continue
                from_history.append(e.name)
            for fname, digest in e.files.items():
                if sha256_file(folder / fname) != digest:
                    raise IntegrityError(f"{folder / fname} ({e.name}) does not match its sha256 in the manifest")
            publish_to_mirror(folder, mirror, e.repo, e.version)
            published.append(e.name)
    return MirrorBuild(published, from_history, unavailable)


def default_state() -> Path:
    return zoo_home() / "hub-mirror"


def start_server(
    mirror_dir: str | Path,
    state_dir: str | Path | None = None,
    port: int | None = None,
    timeout: float = 60.0,
) -> tuple[int, str]:
    """Start olah over a mirror folder on 127.0.0.1; returns (pid, HF_ENDPOINT)."""
    state = Path(state_dir or default_state()).resolve()
    state.mkdir(parents=True, exist_ok=True)
    stop_server(state)
    port = port or free_port()
    config = state / "olah.toml"
    config.write_text(
        "[basic]\n"
        f'host = "127.0.0.1"\nport = {port}\n'
        f'repos-path = "{state / "olah-cache"}"\n'
        f'mirrors-path = ["{Path(mirror_dir).resolve()}"]\n'
        "[accessibility]\noffline = true\n"
    )
    olah = executable("olah-cli")
    if olah is None:
        raise HubError("olah is not installed: pip install 'zoo-codecs[hub]'")
    log = state / "olah.log"
    proc = start_process([olah, "-c", str(config)], cwd=state, log=log)
    try:
        wait_for_port(port, proc, timeout, "olah", HubError, log)
    except HubError:
        stop_group(proc.pid, timeout=5)
        raise
    endpoint = f"http://127.0.0.1:{port}"
    (state / "olah.pid").write_text(f"{proc.pid}\n{endpoint}\n")
    return proc.pid, endpoint


def running_endpoint(state_dir: str | Path | None = None) -> str | None:
    pidfile = Path(state_dir or default_state()) / "olah.pid"
    if not pidfile.exists():
        return None
    pid_s, _, endpoint = pidfile.read_text().partition("\n")
    if not pid_s.strip().isdigit() or not pid_alive(int(pid_s)):
        return None
    return endpoint.strip()


def stop_server(state_dir: str | Path | None = None) -> bool:
    """Stop the olah started from this state folder, by its pid; True if one was running."""
    pidfile = Path(state_dir or default_state()) / "olah.pid"
    if not pidfile.exists():
        return False
    pid_s = pidfile.read_text().split()[:1]
    pidfile.unlink(missing_ok=True)
    if pid_s and pid_s[0].isdigit():
        stop_group(int(pid_s[0]), timeout=5)
    return True


def entry_folder(path: str | Path, repo_root: str | Path | None = None) -> Path:
    """A released entry's folder by its repository path (`model_store/entries/...`): the folder itself while it
    is in the working tree, else its files read from the commit its manifest line names into $ZOO_HOME (a
    retired entry's benchmarks and examples keep working on the very same weights)."""
    folder = Path(path)
    if folder.is_dir():
        return folder
    root = Path(repo_root) if repo_root else Path(__file__).resolve().parents[1]
    try:
        wanted = PurePosixPath(folder.resolve().relative_to(root.resolve()).as_posix())
    except ValueError:
        wanted = PurePosixPath(folder.as_posix())
    for e in Manifest.read():
        if e.path and PurePosixPath(e.path) == wanted:
            out = zoo_home() / "retired" / e.path
            if not all((out / f).exists() for f in e.files):
                read_from_history(e, root, out)
            return out
    raise EntryNotFound(f"{path} is neither an entry folder nor a released entry's path in the manifest")
