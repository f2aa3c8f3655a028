"""Publishing entries (to the Hub, or into a local Hub mirror) and running the embedded mirror.

A mirror is a folder of git repositories laid out as `DIR/models/ORG/NAME`, one commit and tag per entry
version; `olah` (PyPI) serves it over the Hub's HTTP protocol in offline mode, so `huggingface_hub`
with HF_ENDPOINT pointing at it downloads exactly as it would from huggingface.co.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from zoo.entry import ENTRY_FILES, read_config, sha256_file, version_key
from zoo.errors import HubError, IntegrityError, ZooError
from zoo.hub import ManifestEntry, load_manifest

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_STATE = Path(os.environ.get("ZOO_HOME", Path.home() / ".cache" / "zoo")) / "hub-mirror"
_GIT_ENV = {
    "GIT_AUTHOR_NAME": "zoo",
    "GIT_AUTHOR_EMAIL": "zoo@localhost",
    "GIT_COMMITTER_NAME": "zoo",
    "GIT_COMMITTER_EMAIL": "zoo@localhost",
}


def tag_for(version: str) -> str:
    return f"v{version}"


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


def build_mirror(mirror_dir: str | Path, entries: list[ManifestEntry] | None = None) -> list[str]:
    """(Re)build a mirror folder from the released entries this repository ships."""
    mirror = Path(mirror_dir)
    if mirror.exists():
        shutil.rmtree(mirror)
    mirror.mkdir(parents=True)
    published = []
    entries = load_manifest() if entries is None else entries
    for e in sorted(entries, key=lambda e: (e.repo, version_key(e.version))):
        folder = REPO_ROOT / e.path
        for fname, digest in e.files.items():
            if sha256_file(folder / fname) != digest:
                raise IntegrityError(f"{folder / fname} does not match its sha256 in the manifest")
        publish_to_mirror(folder, mirror, e.repo, e.version)
        published.append(e.name)
    return published


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_port(port: int, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise HubError(f"olah exited at startup (status {proc.returncode}); see its log")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise HubError(f"olah did not start listening on 127.0.0.1:{port} within {timeout:.0f} s")


def start_server(
    mirror_dir: str | Path,
    state_dir: str | Path = DEFAULT_STATE,
    port: int | None = None,
    timeout: float = 60.0,
) -> tuple[int, str]:
    """Start olah over a mirror folder on 127.0.0.1; returns (pid, HF_ENDPOINT)."""
    state = Path(state_dir).resolve()
    state.mkdir(parents=True, exist_ok=True)
    stop_server(state)
    port = port or _free_port()
    config = state / "olah.toml"
    config.write_text(
        "[basic]\n"
        f'host = "127.0.0.1"\nport = {port}\n'
        f'repos-path = "{state / "olah-cache"}"\n'
        f'mirrors-path = ["{Path(mirror_dir).resolve()}"]\n'
        "[accessibility]\noffline = true\n"
    )
    olah = shutil.which("olah-cli") or str(Path(sys.executable).with_name("olah-cli"))
    if not Path(olah).exists():
        raise HubError("olah is not installed: pip install 'zoo-codecs[hub]'")
    log = open(state / "olah.log", "wb")  # noqa: SIM115 - handed to the child process
    proc = subprocess.Popen(
        [olah, "-c", str(config)], cwd=state, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        _wait_for_port(port, timeout, proc)
    except HubError:
        proc.kill()
        raise
    endpoint = f"http://127.0.0.1:{port}"
    (state / "olah.pid").write_text(f"{proc.pid}\n{endpoint}\n")
    return proc.pid, endpoint


def running_endpoint(state_dir: str | Path = DEFAULT_STATE) -> str | None:
    pidfile = Path(state_dir) / "olah.pid"
    if not pidfile.exists():
        return None
    pid_s, _, endpoint = pidfile.read_text().partition("\n")
    try:
        os.kill(int(pid_s), 0)
    except (OSError, ValueError):
        return None
    return endpoint.strip()


def stop_server(state_dir: str | Path = DEFAULT_STATE) -> bool:
    """Stop the olah started from this state folder, by its pid; True if one was running."""
    pidfile = Path(state_dir) / "olah.pid"
    if not pidfile.exists():
        return False
    try:
        pid = int(pidfile.read_text().split()[0])
        os.killpg(pid, signal.SIGTERM)
        for _ in range(50):
            os.kill(pid, 0)
            time.sleep(0.1)
        os.killpg(pid, signal.SIGKILL)
    except (OSError, ValueError, IndexError):
        pass
    pidfile.unlink(missing_ok=True)
    return True
