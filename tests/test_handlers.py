"""The top-level TorchServe handler (handlers/zoo_handler.py): an archive built with torch-model-archiver
--handler handlers/zoo_handler.py loads through TorchServe's own model loader and encodes with the package's
handler."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import zipfile

import pytest

from tests.support import REPO, SAMPLE
from zoo.procs import executable

pytest.importorskip("ts.torch_handler.base_handler")

HANDLER = REPO / "handlers" / "zoo_handler.py"
ENTRY = REPO / "model_store" / "entries" / "bmshj2018-hyperprior" / "q1-mse" / "v1.1"


def test_the_handler_module_defines_one_class_over_the_packages():
    from ts.utils.util import list_classes_from_module

    from zoo.handlers.zoo_handler import ZooHandler

    spec = importlib.util.spec_from_file_location("toplevel_zoo_handler", HANDLER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (cls,) = list_classes_from_module(module)  # what TorchServe's loader picks
    assert issubclass(cls, ZooHandler) and cls is not ZooHandler
    assert {k for k in vars(cls) if callable(vars(cls)[k]) and not k.startswith("__")} == set()  # all delegated


@pytest.mark.slow
def test_an_archive_built_with_it_loads_and_encodes(tmp_path, monkeypatch):
    from ts.context import RequestProcessor
    from ts.model_loader import TsModelLoader

    from zoo import bitstream

    archiver = executable("torch-model-archiver")
    if archiver is None:
        pytest.skip("torch-model-archiver is not installed (pip install 'zoo-codecs[serve]')")
    payload = tmp_path / "payload"
    shutil.copytree(ENTRY, payload)
    (payload / "zoo_serve.json").write_text(json.dumps({"op": "encode"}))
    cmd = [archiver, "--model-name", "hp1-encode", "--version", "1.0", "--handler", str(HANDLER)]
    cmd += ["--extra-files", str(payload), "--export-path", str(tmp_path)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)

    model_dir = tmp_path / "model"
    with zipfile.ZipFile(tmp_path / "hp1-encode.mar") as mar:
        mar.extractall(model_dir)
    manifest = json.loads((model_dir / "MAR-INF" / "MANIFEST.json").read_text())
    assert manifest["model"]["handler"] == "zoo_handler.py"
    monkeypatch.syspath_prepend(str(model_dir))  # as a TorchServe worker does
    monkeypatch.delitem(sys.modules, "zoo_handler", raising=False)
    service = TsModelLoader().load("hp1-encode", str(model_dir), handler="zoo_handler.py")
    # one request, as TorchServe's worker hands it over (Service.predict, less its metrics and socket)
    service.context.request_processor = [RequestProcessor({})]
    service.context.request_ids = {0: "1"}
    (answer,) = service._entry_point([{"body": SAMPLE.read_bytes()}], service.context)
    assert service.context.get_response_status(0)[0] == 200
    assert isinstance(answer, bytes | bytearray)
    assert bitstream.loads(bytes(answer)).entry.arch == "bmshj2018-hyperprior"
