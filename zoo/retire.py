"""Retiring a released entry: its folder leaves the working tree, and its manifest line names the commit that
holds its files, from which the embedded mirror (`zoo.mirror`) keeps serving it.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

from zoo.entry import sha256_file
from zoo.errors import IntegrityError, ZooError
from zoo.manifest import Manifest, ManifestEntry
from zoo.mirror import read_from_history
from zoo.publish import _git


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
