"""The TorchServe decode handler (zoo/handlers/zoo_handler.py) under a stub context: a stream that declares a tile
over the decoder's limit is answered 413 at once, before anything is decoded."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("ts.torch_handler.base_handler")


class _Context:
    def __init__(self, model_dir: Path):
        self.system_properties = {"model_dir": str(model_dir)}
        self.status: dict[int, int] = {}

    def set_response_status(self, code: int, phrase: str = "", idx: int = 0) -> None:
        self.status[idx] = code

    def set_response_content_type(self, idx: int, value: str) -> None:
        pass

    def set_response_header(self, idx: int, key: str, value: str) -> None:
        pass


def _handler(fixture_entry: Path, tmp_path: Path):
    from zoo.handlers import zoo_handler

    model_dir = tmp_path / "archive"
    shutil.copytree(fixture_entry, model_dir)
    (model_dir / "zoo_serve.json").write_text(json.dumps({"op": "decode", "backend": "torch"}))
    ctx = _Context(model_dir)
    handler = zoo_handler.ZooHandler()
    handler.initialize(ctx)
    return handler, ctx


def test_a_stream_declaring_one_huge_tile_is_413_before_decoding(fixture_entry, tmp_path):
    import zoo
    from zoo import bitstream

    # What an attacker's encoder makes: one 1088x1024 tile (over the default 1024^2 per tile) from zero latents.
    forger = zoo.load_local(fixture_entry, tile_size=0, max_tile_pixels=1 << 40)
    m = forger.model.M

    class ZeroLatent(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.zeros(x.shape[0], m, x.shape[-2] // 16, x.shape[-1] // 16)

    forger.model.g_a = ZeroLatent()
    data = bitstream.dumps(forger.compress(torch.zeros(3, 1, 1).expand(3, 1088, 1024)))
    handler, ctx = _handler(fixture_entry, tmp_path)
    t0 = time.perf_counter()
    (answer,) = handler.handle([{"body": data}], ctx)
    assert time.perf_counter() - t0 < 1
    assert ctx.status[0] == 413
    assert "tile of 1088x1024 pixels" in json.loads(answer)["error"]


@pytest.mark.parametrize(
    "row",
    [
        {"body": "\u0100 form text \u2603"},  # a form value TorchServe decoded to text beyond Latin-1
        {"field": b"x", "other": b""},  # form fields and no body
    ],
)
def test_form_encoded_requests_are_400_not_500(fixture_entry, tmp_path, row):
    handler, ctx = _handler(fixture_entry, tmp_path)
    (answer,) = handler.handle([row], ctx)
    assert ctx.status[0] == 400 and "Content-Type application/octet-stream" in json.loads(answer)["error"]
