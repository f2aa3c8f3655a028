"""scripts/release_vr.sh's checks, which run before it touches the manifest or a run: what it asks for per mode."""

from __future__ import annotations

import os
import subprocess

from tests.support import REPO


def _release(**env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("VER", "ONLY", "HPNOTE", "MSHNOTE")}
    return subprocess.run(
        ["bash", str(REPO / "scripts" / "release_vr.sh")], env=clean | env, capture_output=True, text=True, timeout=60
    )


def test_release_script_refuses_an_unknown_only_before_any_work():
    done = _release(VER="9.9", ONLY="both-please", HPNOTE="x", MSHNOTE="y")
    assert done.returncode == 2
    assert done.stderr.strip() == "ONLY is hp or msh, not both-please"


def test_release_script_asks_only_for_the_note_of_the_run_it_releases():
    # ONLY=hp needs HPNOTE and not MSHNOTE; both at once need both
    hp = _release(VER="9.9", ONLY="hp")
    assert hp.returncode != 0 and "HPNOTE" in hp.stderr and "MSHNOTE" not in hp.stderr
    msh = _release(VER="9.9", ONLY="msh")
    assert msh.returncode != 0 and "MSHNOTE" in msh.stderr and "HPNOTE" not in msh.stderr.replace("MSHNOTE", "")
    both = _release(VER="9.9", HPNOTE="x")
    assert both.returncode != 0 and "MSHNOTE" in both.stderr
    assert not (REPO / "model_store" / "entries" / "bmshj2018-hyperprior-vr" / "mse" / "v9.9").exists()
