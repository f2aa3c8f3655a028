"""Tests that need the team's shared folder skip, saying why, when it is absent; under CI=true they fail."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.support import REPO


def _run(tmp_path, ci: str | None) -> subprocess.CompletedProcess:
    test = tmp_path / "test_needs_shared.py"
    test.write_text(
        "from tests.support import KODAK, kodak_path\n\n"
        "def test_reads_kodak():\n"
        "    assert kodak_path('kodim01.png').is_file()\n\n"
        "def test_sample_needs_no_shared_folder():\n"
        "    assert kodak_path('kodim23.png').is_file() and not KODAK.exists()\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env |= {"ZOO_SHARED": str(tmp_path / "no-shared"), "PYTHONPATH": str(REPO)}
    if ci is not None:
        env["CI"] = ci
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(test)]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_without_the_shared_folder_tests_skip_with_a_reason(tmp_path):
    proc = _run(tmp_path, None)
    assert proc.returncode == 0, proc.stdout
    assert "1 passed, 1 skipped" in proc.stdout and "needs the team's shared folder" in proc.stdout


def test_under_ci_a_missing_shared_folder_fails_the_run(tmp_path):
    proc = _run(tmp_path, "true")
    assert proc.returncode == 1, proc.stdout
    assert "1 failed, 1 passed" in proc.stdout and "CI=true requires it" in proc.stdout
