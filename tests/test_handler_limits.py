"""The TorchServe decode handler (zoo/handlers/zoo_handler.py) under a stub context: a stream that declares a tile
over the decoder's limit is answered 413 at once, before anything is decoded."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch

from tests.support import kodak_path

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


class _EncodeContext(_Context):
    def __init__(self, model_dir: Path, headers: dict[int, dict[str, str]] | None = None):
        super().__init__(model_dir)
        self.headers = headers or {}

    def get_request_header(self, idx: int, key: str) -> str | None:
        return self.headers.get(idx, {}).get(key)


def test_encode_effort_is_capped_by_the_servers_refinement_limit(fixture_entry, tmp_path):
    """An effort whose steps x pixels exceed the archive's max_refine_work is a 400 naming the effort that
    fits, before any refinement; one within it (form field or header) gives an ordinary decodable file."""
    import io

    from PIL import Image

    import zoo
    from zoo import bitstream
    from zoo.handlers import zoo_handler
    from zoo.imageio import read_image
    from zoo.refine import EFFORTS

    model_dir = tmp_path / "archive"
    shutil.copytree(fixture_entry, model_dir)
    limit = EFFORTS[1].steps * 64 * 64  # effort 1 on 64x64 fits, effort 2 does not
    (model_dir / "zoo_serve.json").write_text(json.dumps({"op": "encode", "max_refine_work": limit}))
    buf = io.BytesIO()
    Image.open(kodak_path("kodim23.png")).crop((300, 200, 364, 264)).save(buf, format="PNG")
    png = buf.getvalue()
    ctx = _EncodeContext(model_dir, {1: {"X-Zoo-Effort": "2"}, 2: {"X-Zoo-Effort": "x"}})
    handler = zoo_handler.ZooHandler()
    handler.initialize(ctx)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t0 = time.perf_counter()
        answers = handler.handle([{"body": png, "effort": b"1"}, {"body": png}, {"body": png}, {"body": png}], ctx)
    finally:
        torch.set_num_threads(threads)
    assert ctx.status.get(0) is None and ctx.status.get(3) is None
    assert ctx.status[1] == 400 and "effort 2 on 64x64 pixels" in json.loads(answers[1])["error"]
    assert "ask for effort 1 or less" in json.loads(answers[1])["error"]
    assert ctx.status[2] == 400 and "effort must be one of" in json.loads(answers[2])["error"]
    codec = zoo.load_local(fixture_entry)
    refined = bitstream.loads(answers[0])
    x, _ = read_image(png)
    assert answers[3] == bitstream.dumps(codec.compress(x))  # no effort asked: the plain encoder's file
    assert codec.decompress(refined).shape == (1, 3, 64, 64)
    assert time.perf_counter() - t0 < 120


def test_the_default_refinement_limit_admits_effort_2_on_a_kodak_image_and_no_more():
    """An archive without its own max_refine_work serves effort 2 on a 768x512 image (what the docs promise a
    server does by default) and refuses effort 3 there."""
    from zoo.handlers.zoo_handler import DEFAULT_MAX_REFINE_WORK
    from zoo.refine import EFFORTS

    kodak = 768 * 512
    assert EFFORTS[2].steps * kodak <= DEFAULT_MAX_REFINE_WORK < EFFORTS[3].steps * kodak


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
