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
    with pytest.raises(IntegrityError, match="is a directory, not a regular file"):
        read_config(folder)


@pytest.mark.parametrize("device", ["cuda:7", "banana", "xla"])
def test_an_unavailable_device_is_an_input_error(fixture_entry, device):
    import zoo

    with pytest.raises(InputError, match="device"):
        load_entry(fixture_entry, device=device)
    with pytest.raises(InputError, match="device"):
        zoo.load_local(fixture_entry, device=device)


def _vr_config(**change) -> dict:
    levels = {str(q): {"lambda": 0.001 * q} for q in range(1, 9)}
    cfg = {
        "architecture": "bmshj2018-hyperprior-vr",
        "quality": 0,
        "metric": "mse",
        "version": "1.0",
        "lambda": None,
        "levels": levels,
        "widths": {"N": 128, "M": 192},
        "weights_fingerprint": "00" * 16,
        "bitstream_format": 1,
    }
    return cfg | change


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"quality": 3}, "variable-rate entry .* has quality 0"),
        ({"lambda": 0.01}, "one per level"),
        ({"levels": {"1": {"lambda": 0.1}}}, "each of bmshj2018-hyperprior-vr's levels"),
        ({"levels": {str(q): {"lambda": float("nan")} for q in range(1, 9)}}, "finite non-negative lambda"),
    ],
)
def test_variable_rate_configs_are_checked_from_the_registry(change, message):
    from zoo.entry import check_config

    assert check_config(_vr_config()).levels["8"] == {"lambda": 0.008}
    with pytest.raises(IntegrityError, match=message):
        check_config(_vr_config(**change))


def _card_datasets(training: dict, arch: str = "bmshj2018-hyperprior") -> object:
    """The `datasets` of the front matter of the card written for an entry trained as `training` records."""
    import yaml

    from zoo.card import model_card
    from zoo.compressed import EntryId
    from zoo.entry import EntryInfo

    quality = 0 if arch.endswith("-vr") else 1
    info = EntryInfo(EntryId(arch, quality, "mse", "1.0"), {"N": 128, "M": 192}, None, bytes(16), 1, training=training)
    card = model_card(info)
    assert card.startswith("---\n")
    return yaml.safe_load(card[4:].split("\n---\n", 1)[0]).get("datasets")


@pytest.mark.parametrize("arch", ["bmshj2018-hyperprior", "bmshj2018-hyperprior-vr"])
def test_a_card_names_the_zoo_training_photos_by_their_sources_and_licences(arch):
    """The zoo's own releases record their data by its folder in the team's setup; the card names where a user
    finds each collection and its licence instead."""
    from zoo.card import TRAINING_COLLECTIONS

    both = "shared/datasets/wallpapers (178, licences in its SOURCES.md) + photos 001-035 (036-039 held out)"
    named = _card_datasets({"dataset": both}, arch)
    assert named == [*TRAINING_COLLECTIONS["wallpapers"], *TRAINING_COLLECTIONS["photos"]]
    photos = _card_datasets({"dataset": "shared/datasets/photos 001-035 (036-039 held out for validation)"}, arch)
    assert photos == list(TRAINING_COLLECTIONS["photos"])
    for name in named:
        assert "shared/" not in name and "datasets/" not in name and "(" in name, name  # a source and its licence


def test_a_card_names_other_data_as_given_or_not_at_all():
    own = "CLIC 2020 professional: 585 photos # mine"  # a YAML mapping and a comment, were it written bare
    assert _card_datasets({"dataset": own}) == [own]
    assert _card_datasets({"dataset": "my holiday photos"}) == ["my holiday photos"]
    assert _card_datasets({"train_dir": "train"}) is None  # a folder name is no dataset a user can find


def _load_in_subprocess(folder: Path) -> tuple[float, str, int]:
    """(seconds, error message, MiB the peak RSS grew by) of load_entry(folder) in a fresh process, measured from
    after its imports (what the imports take depends on the machine, not on the entry)."""
    code = (
        "import resource, sys, time\n"
        "from zoo.entry import load_entry\n"
        "import zoo.bitstream, zoo.models\n"
        "from zoo.errors import IntegrityError\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "t0 = time.perf_counter()\n"
        "try:\n"
        "    load_entry(sys.argv[1])\n"
        "    print('loaded')\n"
        "except IntegrityError as exc:\n"
        "    print(f'{time.perf_counter() - t0:.3f}', exc)\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n"
    )
    run = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, timeout=300)
    lines = run.stdout.strip().splitlines()
    assert run.returncode == 0 and len(lines) == 2 and lines[0] != "loaded", run.stdout + run.stderr
    seconds, message = lines[0].split(" ", 1)
    return float(seconds), message, int(lines[1])


def _elic_config(folder: Path, widths: dict) -> None:
    cfg = _config(folder) | {"architecture": "elic2022-official", "widths": widths}
    (folder / CONFIG_NAME).write_text(json.dumps(cfg))


def test_a_config_cannot_ask_for_more_than_the_weights_file_holds(fixture_entry, tmp_path):
    """ELIC at the largest accepted widths (0.7-1.2 GB once built) described next to a small weights file:
    refused from the safetensors header, with the model only described on the meta device."""
    folder = tmp_path / "elic"
    shutil.copytree(fixture_entry, folder)
    _elic_config(folder, {"N": 384, "M": 640})
    seconds, message, rss = _load_in_subprocess(folder)
    assert "weights do not fit the Elic2022Official" in message and "missing" in message
    assert seconds < 2.0 and rss < 200, (seconds, rss)  # building it would take 700-1,200 MiB


def test_elic_channel_groups_are_bounded_in_count(fixture_entry, tmp_path):
    folder = tmp_path / "groups"
    shutil.copytree(fixture_entry, folder)
    _elic_config(folder, {"N": 192, "M": 640, "groups": [1] * 640})
    seconds, message, _ = _load_in_subprocess(folder)
    assert "640 channel groups, more than 16" in message and seconds < 1.0


def test_a_weight_of_another_dtype_is_refused_from_the_header(fixture_entry, tmp_path):
    sd, _ = _entry_tensors(fixture_entry)
    sd["g_a.0.weight"] = sd["g_a.0.weight"].double()
    folder = _forge(tmp_path / "f64", fixture_entry, sd)
    with pytest.raises(IntegrityError, match=r"g_a\.0\.weight is torch\.float64, expected torch\.float32"):
        load_entry(folder)


def _entry_tensors(folder: Path) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors.torch import load_file

    return load_file(str(folder / WEIGHTS_NAME)), _config(folder)


def test_a_deeply_nested_config_is_an_integrity_error(fixture_entry, tmp_path):
    folder = tmp_path / "deep"
    shutil.copytree(fixture_entry, folder)
    (folder / CONFIG_NAME).write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(IntegrityError, match="nests 200000 levels deep"):
        read_config(folder)


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda cdf, lengths: cdf.__setitem__((0, 2), cdf[0, 1] - 1), "CDF table 0 is not a strictly increasing"),
        (lambda cdf, lengths: lengths.__setitem__(1, 10**6), "cdf_lengths out of range"),
        (lambda cdf, lengths: cdf.__setitem__((3, 0), 7), "CDF table 3"),
    ],
)
def test_tampered_cdf_tables_are_refused_on_load_naming_the_tensor(fixture_entry, tmp_path, tamper, message):
    sd, _ = _entry_tensors(fixture_entry)
    cdf, lengths = sd["entropy_bottleneck._quantized_cdf"].clone(), sd["entropy_bottleneck._cdf_length"].clone()
    tamper(cdf, lengths)
    sd["entropy_bottleneck._quantized_cdf"], sd["entropy_bottleneck._cdf_length"] = cdf, lengths
    folder = _forge(tmp_path / "tables", fixture_entry, sd)
    with pytest.raises(IntegrityError, match=f"entropy_bottleneck._quantized_cdf: {message}"):
        load_entry(folder)


def test_cdf_tables_longer_than_16_bits_allow_are_refused_before_reading(fixture_entry, tmp_path):
    sd, _ = _entry_tensors(fixture_entry)
    rows = sd["entropy_bottleneck._quantized_cdf"].shape[0]
    sd["entropy_bottleneck._quantized_cdf"] = torch.zeros(rows, (1 << 16) + 2, dtype=torch.int32)
    folder = _forge(tmp_path / "long", fixture_entry, sd)
    with pytest.raises(IntegrityError, match="tables of 65538 entries"):
        load_entry(folder)


@pytest.mark.parametrize("name", [CONFIG_NAME, WEIGHTS_NAME])
def test_a_fifo_in_an_entry_is_refused_without_waiting(fixture_entry, tmp_path, name):
    import os

    folder = tmp_path / "fifo"
    shutil.copytree(fixture_entry, folder)
    (folder / name).unlink()
    os.mkfifo(folder / name)
    code = "import sys\nfrom zoo.entry import load_entry\nload_entry(sys.argv[1])\n"
    run = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "IntegrityError" in run.stderr
    assert f"{name} is a FIFO (named pipe), not a regular file" in run.stderr
