"""Publishing entries (to the Hub, or into a local Hub mirror) and running the embedded mirror.

A mirror is a folder of git repositories laid out as `DIR/models/ORG/NAME`, one commit and tag per entry
version; `olah` (PyPI) serves it over the Hub's HTTP protocol in offline mode, so `huggingface_hub`
with HF_ENDPOINT pointing at it downloads exactly as it would from huggingface.co.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from zoo.entry import ENTRY_FILES, read_config, sha256_file, version_key
from zoo.errors import EntryNotFound, HubError, IntegrityError, ZooError
from zoo.manifest import Manifest, ManifestEntry, tag_for
from zoo.procs import executable, free_port, pid_alive, start_process, stop_group, wait_for_port, zoo_home

ENTRIES_PREFIX = "model_store/entries"
DEFAULT_ENTRIES = Path(ENTRIES_PREFIX)  # relative to the current folder
_GIT_ENV = {
    "GIT_AUTHOR_NAME": "zoo",
    "GIT_AUTHOR_EMAIL": "zoo@localhost",
    "GIT_COMMITTER_NAME": "zoo",
    "GIT_COMMITTER_EMAIL": "zoo@localhost",
}


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, **_GIT_ENV}
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise HubError(f"git {' '.join(args)} failed in {repo}: {proc.stderr.strip()[:300]}")
    return proc.stdout.strip()


def _check_repo_id(repo: str) -> tuple[str, str]:
    org, _, name = repo.partition("/")
    if not org or not name or "/" in name or org.startswith(".") or name.startswith("."):
        raise ZooError(f"repository id must be ORG/NAME, got {repo!r}")
    return org, name


def publish_to_mirror(entry_dir: str | Path, mirror_dir: str | Path, repo: str, version: str) -> str:
    """Commit the entry's files into DIR/models/ORG/NAME and tag the commit; returns the commit sha."""
    org, name = _check_repo_id(repo)
    read_config(entry_dir)  # refuse folders that are not entries
    target = Path(mirror_dir) / "models" / org / name
    if not (target / ".git").exists():
        target.mkdir(parents=True, exist_ok=True)
        _git(target, "init", "-q", "-b", "main")
    tag = tag_for(version)
    if _git(target, "tag", "--list", tag):
        raise HubError(f"{repo} already has a tag {tag} in {mirror_dir}")
    for f in ENTRY_FILES:
        shutil.copyfile(Path(entry_dir) / f, target / f)
    _git(target, "add", *ENTRY_FILES)
    _git(target, "commit", "-q", "--allow-empty", "-m", f"zoo entry {name} version {version}")
    _git(target, "tag", tag)
    return _git(target, "rev-parse", "HEAD")


def publish_to_hub(entry_dir: str | Path, repo: str, version: str, token: str | None = None) -> str:
    """create_repo (exist_ok), upload_folder, create_tag on the Hub at HF_ENDPOINT; returns the commit sha."""
    from huggingface_hub import HfApi

    _check_repo_id(repo)
    read_config(entry_dir)
    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT"), token=token)
    try:
        api.create_repo(repo, repo_type="model", exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo,
            folder_path=str(entry_dir),
            allow_patterns=list(ENTRY_FILES),
            commit_message=f"zoo entry version {version}",
        )
        api.create_tag(repo, tag=tag_for(version), revision=commit.oid)
    except Exception as exc:  # network and HTTP errors of every kind: one line for the user
        raise HubError(f"publishing to {repo} at {api.endpoint} failed: {type(exc).__name__}: {exc}") from None
    return commit.oid


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


def retire_entry(name: str, manifest: str | Path, repo_root: str | Path = ".") -> ManifestEntry:
    """Retire a released entry (`ARCH/qQ-METRIC@VERSION`): record in its manifest line the commit that holds its
    files (HEAD, after checking them against the manifest's sha256) and `git rm` its folder. The lead commits
    both together; the entry stays loadable through `zoo hub serve` from any clone with that commit."""
    root = Path(repo_root).resolve()
    released = Manifest.read(manifest)
    e = released.find(name)
    if e.commit:
        raise ZooError(f"{name} is already retired (commit {e.commit[:12]})")
    head = _git(root, "rev-parse", "HEAD")
    with tempfile.TemporaryDirectory() as tmp:
        folder = read_from_history(replace(e, commit=head), root, Path(tmp))
        for fname, digest in e.files.items():
            if sha256_file(folder / fname) != digest:
                raise IntegrityError(f"{e.path}/{fname} at HEAD does not match the manifest: commit it first")
    _git(root, "rm", "-r", "-q", "--", e.path)
    released.retire(name, head).write()
    return replace(e, commit=head)


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
