"""A real TorchServe on loopback ports: HTTP encode/decode equal the in-process codec, errors are 4xx JSON,
concurrent clients get their own answers, and a killed worker comes back."""

from __future__ import annotations

import io
import json
import shutil
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

from tests.support import KODAK
from zoo import bitstream

pytestmark = pytest.mark.skipif(shutil.which("java") is None, reason="TorchServe needs Java 17")


def _post(url: str, body: bytes, timeout: float = 120) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/octet-stream"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def _png(w: int, h: int, left: int = 300) -> bytes:
    buf = io.BytesIO()
    Image.open(KODAK / "kodim23.png").crop((left, 200, left + w, 200 + h)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def server(tmp_path_factory, fixture_entry):
    from zoo.serve import build_archives, start, stop

    root = tmp_path_factory.mktemp("ts")
    build_archives(fixture_entry, root / "store", name="hp", batch_size=4, max_batch_delay_ms=50, max_pixels=200_000)
    info = start(root / "store", state_dir=root / "state", auth=False)
    yield info
    stop(root / "state")


def test_http_round_trip_equals_in_process(server, fixture_entry):
    import zoo
    from zoo.imageio import read_image, to_uint8

    codec = zoo.load_local(fixture_entry)
    body = _png(96, 64)
    status, headers, data = _post(f"{server['inference']}/predictions/hp-encode", body)
    assert status == 200, data
    assert data == bitstream.dumps(codec.compress(read_image(body)[0]))
    assert headers["x-zoo-entry"] == str(codec.entry)
    assert float(headers["x-zoo-bpp"]) == pytest.approx(8 * len(data) / (96 * 64), rel=1e-5)
    status, headers, png = _post(f"{server['inference']}/predictions/hp-decode", data)
    assert status == 200 and headers["content-type"].startswith("image/png")
    expected = to_uint8(codec.decompress(bitstream.loads(data)))
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), expected)


def test_bad_inputs_are_4xx_json(server, tmp_path):
    from zoo.compressed import EntryId
    from zoo.registry import create_model

    url = server["inference"]
    status, _, body = _post(f"{url}/predictions/hp-encode", b"definitely not an image")
    assert status == 400 and "error" in json.loads(body)
    status, _, body = _post(f"{url}/predictions/hp-decode", b"\x89ZOO" + b"\x01" * 40)
    assert status == 400 and "error" in json.loads(body)
    # A valid zoo file made by another entry.
    from zoo.codec import Codec

    other = create_model("bmshj2018-factorized", N=8, M=8).eval()
    other.update()
    foreign = Codec(other, EntryId("bmshj2018-factorized", 1, "mse", "x"), bytes(16)).compress(torch.rand(3, 32, 32))
    status, _, body = _post(f"{url}/predictions/hp-decode", bitstream.dumps(foreign))
    assert status == 400 and "made by" in json.loads(body)["error"]
    status, _, body = _post(f"{url}/predictions/hp-encode", _png(500, 500, left=0))
    assert status == 413 and "limit" in json.loads(body)["error"]
    # The worker survived all of that.
    assert _post(f"{url}/predictions/hp-encode", _png(32, 32))[0] == 200


def test_concurrent_clients_get_their_own_answers(server):
    url = f"{server['inference']}/predictions/hp-encode"
    sizes = [(32 + 16 * (i % 4), 48 + 8 * (i % 3)) for i in range(100)]

    def client(k: int) -> list[bool]:
        ok = []
        for i in range(k * 25, (k + 1) * 25):
            w, h = sizes[i]
            status, _, data = _post(url, _png(w, h, left=200 + i))
            ok.append(
                status == 200 and (bitstream.peek_header(data).width, bitstream.peek_header(data).height) == (w, h)
            )
        return ok

    with ThreadPoolExecutor(4) as pool:
        results = [r for rs in pool.map(client, range(4)) for r in rs]
    assert len(results) == 100 and all(results)


def test_killed_worker_is_restarted(server):
    import psutil

    url = f"{server['inference']}/predictions/hp-encode"
    frontend = psutil.Process(server["pid"])
    workers = [p for p in frontend.children(recursive=True) if "model_service_worker" in " ".join(p.cmdline())]
    assert workers
    for w in workers:
        w.kill()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if _post(url, _png(32, 32), timeout=20)[0] == 200:
                break
        except OSError:  # the request caught in the restart may time out
            pass
        time.sleep(1)
    assert _post(url, _png(48, 32))[0] == 200


def test_config_keeps_token_auth_unless_asked(tmp_path):
    from zoo.serve import write_config

    on = write_config(tmp_path / "a", tmp_path, inference_port=1, management_port=2, metrics_port=3).read_text()
    off = write_config(
        tmp_path / "b", tmp_path, inference_port=1, management_port=2, metrics_port=3, auth=False
    ).read_text()
    assert "disable_token_authorization=false" in on and "disable_token_authorization=true" in off
    assert "inference_address=http://127.0.0.1:1" in on and "metrics_mode=prometheus" in on
