"""Entry folders from untrusted hands: configs and weights are checked before they cost anything."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from zoo.entry import CONFIG_NAME, WEIGHTS_NAME, load_entry, read_config, weights_fingerprint
from zoo.errors import InputError, IntegrityError


def _config(folder: Path) -> dict:
    return json.loads((folder / CONFIG_NAME).read_text())


def _forge(folder: Path, template: Path, sd: dict[str, torch.Tensor], **config) -> Path:
    """An entry folder holding `sd` with a config whose fingerprint matches it."""
    folder.mkdir()
    save_file(sd, str(folder / WEIGHTS_NAME), metadata={"architecture": "bmshj2018-hyperprior"})
    cfg = _config(template) | {"weights_fingerprint": weights_fingerprint(sd).hex()} | config
    (folder / CONFIG_NAME).write_text(json.dumps(cfg))
    return folder


def test_a_small_weights_file_cannot_make_a_large_model(fixture_entry, tmp_path):
    """A 216-byte safetensors whose first weight is (20000, 0, 5, 5) used to build a 3.3 GB model before the
    strict load failed; now it is refused from its shapes, fast, with the model never built."""
    huge = {"g_a.0.weight": torch.empty(20000, 0, 5, 5), "g_a.6.weight": torch.empty(20000, 0, 5, 5)}
    at_config_widths = _forge(tmp_path / "a", fixture_entry, huge)
    at_huge_widths = _forge(tmp_path / "b", fixture_entry, huge, widths={"N": 20000, "M": 20000})
    assert (at_config_widths / WEIGHTS_NAME).stat().st_size < 300
    code = (
        "import resource, sys, time\n"
        "from zoo.entry import load_entry\n"
        "import zoo.bitstream, zoo.models  # imported before timing: the clock measures the checks\n"
        "from zoo.errors import IntegrityError\n"
        "for folder in sys.argv[1:]:\n"
        "    t0 = time.perf_counter()\n"
        "    try:\n"
        "        load_entry(folder)\n"
        "    except IntegrityError as exc:\n"
        "        print(f'{time.perf_counter() - t0:.3f}', exc)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)\n"  # MiB
    )
    run = subprocess.run(
        [sys.executable, "-c", code, str(at_config_widths), str(at_huge_widths)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = run.stdout.strip().splitlines()
    assert run.returncode == 0 and len(lines) == 3, run.stdout + run.stderr
    for line, expected in zip(lines[:2], ("weights do not fit", "N=20000 is out of range"), strict=True):
        seconds, message = line.split(" ", 1)
        assert float(seconds) < 1.0 and expected in message, line
    assert int(lines[2]) < 1024, f"peak RSS {lines[2]} MiB"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"quality": 9}, "quality 9 is not one of bmshj2018-hyperprior's"),
        ({"quality": 2.5}, "quality 2.5"),
        ({"metric": "l1"}, "metric 'l1'"),
        ({"weights_dtype": "int8"}, "weights_dtype 'int8'"),
        ({"version": "latest"}, "not a version number"),
        ({"lambda": -1}, "lambda"),
        ({"widths": {"N": 0, "M": 48}}, "N=0 is out of range"),
        ({"widths": {"N": 32}}, "takes widths"),
        ({"bitstream_format": 99}, "bitstream_format 99"),
        ({"weights_fingerprint": "abcd"}, "2 bytes, not 16"),
    ],
)
def test_config_values_are_checked(fixture_entry, tmp_path, change, message):
    folder = tmp_path / "entry"
    shutil.copytree(fixture_entry, folder)
    (folder / CONFIG_NAME).write_text(json.dumps(_config(folder) | change))
    with pytest.raises(IntegrityError, match=message):
        read_config(folder)


def test_a_config_that_is_a_folder_is_an_integrity_error(fixture_entry, tmp_path):
    folder = tmp_path / "entry"
    shutil.copytree(fixture_entry, folder)
    (folder / CONFIG_NAME).unlink()
    (folder / CONFIG_NAME).mkdir()
    with pytest.raises(IntegrityError, match="not a readable file"):
        read_config(folder)


@pytest.mark.parametrize("device", ["cuda:7", "banana", "xla"])
def test_an_unavailable_device_is_an_input_error(fixture_entry, device):
    import zoo

    with pytest.raises(InputError, match="device"):
        load_entry(fixture_entry, device=device)
    with pytest.raises(InputError, match="device"):
        zoo.load_local(fixture_entry, device=device)
