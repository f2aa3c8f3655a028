"""Session fixtures: entry folders made from CompressAI's fixture models, and a real olah Hub mirror."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support import fixture_model


@pytest.fixture(scope="session")
def fixture_entry(tmp_path_factory) -> Path:
    """CompressAI's small bmshj2018-hyperprior fixture saved as a zoo entry folder."""
    from zoo.entry import save_entry

    out = tmp_path_factory.mktemp("entries") / "hyperprior"
    save_entry(
        fixture_model("bmshj2018-hyperprior"),
        out,
        arch="bmshj2018-hyperprior",
        quality=1,
        version="0.1",
        training={"dataset": "fixture"},
    )
    return out


@pytest.fixture(scope="session")
def arch_entry(tmp_path_factory):
    """arch -> CompressAI's fixture of that architecture saved as a zoo entry folder (made once, on demand)."""
    from zoo.entry import save_entry

    made: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in made:
            out = tmp_path_factory.mktemp("entries") / arch
            save_entry(fixture_model(arch), out, arch=arch, quality=1, version="0.1", training={"dataset": "fixture"})
            made[arch] = out
        return made[arch]

    return get


def write_manifest(path: Path, entries: list[dict]) -> Path:
    path.write_text(json.dumps({"format": 1, "org": "zoo-test", "entries": entries}))
    return path


@pytest.fixture
def one_thread():
    """One intra-op thread for the test: refinement and searches are many small passes, several times faster on
    one thread than on two shared cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
