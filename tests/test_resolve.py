"""The one resolver of model arguments: registry names, entry folders, checkpoints and `hf-hub:` names, each to
the files it means and a codec; bad arguments are refused with a typed error before anything is loaded.
(Registry names through a real Hub mirror are tested in test_hub.py, retired entries' paths in test_mirror.py.)"""

from __future__ import annotations

import pytest
import torch

from zoo.cli import main
from zoo.errors import EntryNotFound, InputError
from zoo.registry import create_model
from zoo.resolve import load, parse_hf_name, resolve_model


def test_an_entry_folder_resolves_to_itself_and_its_codec(fixture_entry):
    source = resolve_model(fixture_entry)
    assert source.kind == "folder" and source.path == fixture_entry
    assert source.info.entry.arch == "bmshj2018-hyperprior"
    assert str(source.codec().entry) == "bmshj2018-hyperprior/q1-mse@0.1"
    with pytest.raises(EntryNotFound, match="no level 2"):  # a fixed-rate folder is its own quality
        resolve_model(fixture_entry, quality=2).codec()


def test_a_checkpoint_needs_its_architecture_and_is_labelled_with_its_quality(tmp_path):
    ckpt = tmp_path / "run7.pt"
    torch.save(create_model("bmshj2018-factorized", N=8, M=12).state_dict(), ckpt)
    source = resolve_model(ckpt, quality=3, arch="bmshj2018-factorized")
    assert source.kind == "checkpoint"
    codec = source.codec()
    assert str(codec.entry) == "bmshj2018-factorized/q3-mse@run7"
    assert codec.model.has_tables
    with pytest.raises(InputError, match="--arch"):
        resolve_model(ckpt).codec()
    with pytest.raises(InputError, match="torch backend"):
        source.codec(backend="onnx")


@pytest.mark.parametrize(
    ("name", "error", "match"),
    [
        ("no-such-arch", EntryNotFound, "unknown architecture"),
        ("no/such/folder", EntryNotFound, "neither an entry folder"),
        ("hf-hub:only-a-name", InputError, "hf-hub:ORG/NAME"),
    ],
)
def test_names_that_mean_nothing_are_refused_before_any_download(name, error, match):
    with pytest.raises(error, match=match):
        resolve_model(name)


def test_a_device_this_machine_lacks_is_refused_before_resolving():
    with pytest.raises(InputError, match="device"):
        load("bmshj2018-hyperprior", quality=3, device="cuda:7")


def test_hub_names_parse_with_main_as_the_default_revision():
    assert parse_hf_name("hf-hub:org/name") == ("org/name", "main")
    assert parse_hf_name("hf-hub:org/name@v1.0") == ("org/name", "v1.0")


def test_export_and_eval_take_a_checkpoint_through_the_same_resolver(tmp_path, capsys):
    ckpt = tmp_path / "ck.pt"
    torch.save(create_model("bmshj2018-factorized", N=8, M=12).state_dict(), ckpt)
    assert main(["export", str(ckpt), "--format", "torchscript", "--out", str(tmp_path / "out")]) == 2
    assert "--arch" in capsys.readouterr().err
