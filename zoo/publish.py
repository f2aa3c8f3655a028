"""Publishing entries: to the Hub (`huggingface_hub`), or into a local Hub mirror folder as a git commit and tag
per entry version (what `zoo.mirror` builds and serves).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from zoo.entry import ENTRY_FILES, read_config
from zoo.errors import HubError, ZooError
from zoo.manifest import tag_for

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
