"""The README's commands run as written: the shell blocks marked cheap run in a checkout-like folder, the test
command is the one CI runs, and the paths and documents it names exist.

Convention: a fenced ```bash block right after a line `<!-- readme-test: run -->` is cheap (seconds, offline, no
server, no training) and is run here exactly as written, from a folder that holds the checkout's `samples/`,
`model_store/` and `recipes/`, with `zoo` on PATH running this tree. Other blocks (installs, servers, training) are
not run here; `.ci/run` runs the quickstart and the test command.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys

import pytest

from tests.support import REPO

README = (REPO / "README.md").read_text()
MARK = "<!-- readme-test: run -->"


def _blocks() -> list[tuple[str, str]]:
    """(info string, body) of every fenced block, in order."""
    return re.findall(r"^```(\w*)\n(.*?)^```$", README, flags=re.S | re.M)


def _cheap_blocks() -> list[str]:
    return re.findall(rf"^{re.escape(MARK)}\n```bash\n(.*?)^```$", README, flags=re.S | re.M)


def test_the_readme_marks_cheap_blocks_and_each_is_bash():
    assert _cheap_blocks(), "the README marks no block to run"
    assert README.count(MARK) == len(_cheap_blocks())  # every marker is followed by a bash block


def test_the_test_command_is_the_one_ci_runs():
    last = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if line.strip()][-1]
    assert any(body.strip() == last for lang, body in _blocks() if lang == "bash")


def test_the_paths_and_documents_named_exist():
    named = set(
        re.findall(r"(?<![\w/.])((?:docs|model_store|recipes|handlers|export|samples|scripts)/[\w./-]*\w)", README)
    )
    placeholder = re.compile(r"[A-Z]{3,}")  # recipes/FAMILY.toml names no file
    missing = [p for p in sorted(named) if not placeholder.search(p) and not (REPO / p).exists()]
    assert not missing


@pytest.mark.slow
@pytest.mark.parametrize("block", _cheap_blocks(), ids=lambda b: b.splitlines()[0][:40])
def test_a_cheap_block_runs_as_written(block, tmp_path):
    for name in ("samples", "model_store", "recipes"):
        (tmp_path / name).symlink_to(REPO / name)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "zoo"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m zoo.cli "$@"\n')
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR)
    env = os.environ | {"PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
