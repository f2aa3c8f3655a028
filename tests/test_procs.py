"""Local server processes: stopping a process group ends its children too; a server that dies at startup is a
typed error naming its log."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from zoo.errors import HubError
from zoo.procs import free_port, pid_alive, start_process, stop_group, wait_for_port


def test_stop_group_ends_the_server_and_its_children(tmp_path):
    # A server with a child of its own, like TorchServe's frontend and its workers.
    script = "import subprocess, time; subprocess.Popen(['sleep', '60']); time.sleep(60)"
    proc = start_process([sys.executable, "-c", script], cwd=tmp_path, log=tmp_path / "log")
    time.sleep(0.5)
    children = subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert len(children) == 2, children
    t0 = time.monotonic()
    assert stop_group(proc.pid, timeout=10)
    assert time.monotonic() - t0 < 5
    assert not any(pid_alive(int(p)) and int(p) != proc.pid for p in children)
    assert proc.poll() is not None
    assert not stop_group(proc.pid)  # already gone


def test_a_server_that_exits_at_startup_is_a_typed_error(tmp_path):
    proc = start_process([sys.executable, "-c", "print('bad config'); raise SystemExit(3)"], cwd=tmp_path,
                         log=tmp_path / "log")  # fmt: skip
    with pytest.raises(HubError, match="exited at startup .status 3.; see .*log"):
        wait_for_port(free_port(), proc, 30, "olah", HubError, tmp_path / "log")
    assert "bad config" in (tmp_path / "log").read_text()
