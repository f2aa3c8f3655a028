"""Local servers run as child processes: free ports, start in their own process group, wait, stop by pid.

Used by the embedded Hub mirror (`zoo.mirror`, olah) and TorchServe (`zoo.serve`); both keep the pid in a
state folder so another process (`zoo hub stop`, `zoo serve --stop`) can stop exactly the server it started.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from zoo.errors import ZooError


def zoo_home() -> Path:
    """Where zoo keeps what it builds at run time (servers' state, archives): $ZOO_HOME or ~/.cache/zoo."""
    return Path(os.environ.get("ZOO_HOME") or Path.home() / ".cache" / "zoo")


def executable(name: str) -> str | None:
    """A console script on PATH or beside this interpreter (a virtual environment that is not activated)."""
    found = shutil.which(name)
    if found:
        return found
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.exists() else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_process(
    cmd: Sequence[str], *, cwd: str | Path, log: str | Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen:
    """Start `cmd` in a new session (its own process group, so stopping it stops its children too),
    with stdout and stderr appended to `log`."""
    with open(log, "ab") as out:  # the child keeps its own descriptor
        return subprocess.Popen(
            list(cmd),
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_for_port(
    port: int, proc: subprocess.Popen, timeout: float, what: str, error: type[ZooError], log: str | Path
) -> None:
    """Return once 127.0.0.1:port accepts connections; `error` if the process exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise error(f"{what} exited at startup (status {proc.returncode}); see {log}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise error(f"{what} did not start listening on 127.0.0.1:{port} within {timeout:.0f} s; see {log}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _zombie(pid: int) -> bool:
    """Exited but not yet reaped (a server whose starter has exited waits for init to reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def _group_has_others(pgid: int) -> bool:
    """Whether a live process other than the leader is still in the process group (its children)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and int(stat.parent.name) != pgid and fields[0] != "Z":
            return True
    return False


def stop_group(pid: int, timeout: float = 20.0) -> bool:
    """SIGTERM the process group led by `pid`, SIGKILL it after `timeout`; False if it was already gone."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except OSError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:  # reap it if it is our child, or it stays a zombie that killpg still finds
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        try:
            os.killpg(pid, 0)
        except OSError:
            return True
        if _zombie(pid) and not _group_has_others(pid):
            return True
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass
    return True
