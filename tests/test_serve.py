"""A real TorchServe on loopback ports: HTTP encode/decode equal the in-process codec
(a checkerboard context model too), errors are 4xx JSON,
a bad request does not spoil the others in its batch, concurrent clients get their own answers, onnx archives
carry their graphs, and a killed worker comes back."""

from __future__ import annotations

import io
import json
import shutil
import threading
import time
import urllib.error
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.support import kodak_path
from zoo import bitstream


def _post(url: str, body: bytes, timeout: float = 120, headers: dict | None = None) -> tuple[int, dict, bytes]:
    headers = {"Content-Type": "application/octet-stream", **(headers or {})}
    req = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def _png(w: int, h: int, left: int = 300) -> bytes:
    buf = io.BytesIO()
    Image.open(kodak_path("kodim23.png")).crop((left, 200, left + w, 200 + h)).save(buf, format="PNG")
    return buf.getvalue()


def _post_together(url: str, bodies: list[bytes]) -> list[tuple[int, dict, bytes]]:
    """POST all bodies at the same moment, one thread each, so that they can land in one batch."""
    barrier = threading.Barrier(len(bodies))

    def send(body: bytes) -> tuple[int, dict, bytes]:
        barrier.wait()
        return _post(url, body)

    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(send, bodies))


def _in_one_batch(url: str, bodies: list[bytes], attempts: int = 10) -> list[tuple[int, dict, bytes]]:
    """Answers to `bodies` sent together, from a round the worker handled as a single batch (X-Zoo-Batch)."""
    for _ in range(attempts):
        answers = _post_together(url, bodies)
        if all(headers.get("x-zoo-batch") == str(len(bodies)) for _, headers, _ in answers):
            return answers
    pytest.fail(f"{len(bodies)} simultaneous requests never landed in one batch in {attempts} rounds")


@pytest.fixture(scope="module")
def vr_entry(tmp_path_factory) -> Path:
    """A small variable-rate hyperprior entry (random weights, gains on the λ ladder)."""
    from zoo.entry import save_entry
    from zoo.registry import LAMBDAS, create_model

    torch.manual_seed(0)
    model = create_model("bmshj2018-hyperprior-vr", N=32, M=48)
    model.y_gain.init_from_lambdas(LAMBDAS["mse"], LAMBDAS["mse"][2])
    out = tmp_path_factory.mktemp("vr") / "entry"
    save_entry(model, out, arch="bmshj2018-hyperprior-vr", quality=0, version="0.1")
    return out


# Context models served over HTTP, by archive name. ELIC runs through the same handler in-process
# (test_elic_handler_round_trip): two more workers here would add about 20 s to the server's start on a busy
# 2-core machine.
HTTP_CONTEXT_MODELS = {"cb": "cheng2020-anchor-checkerboard"}


@pytest.fixture(scope="module")
def store(tmp_path_factory, fixture_entry, vr_entry, arch_entry):
    """Torch and onnx archives of the fixture entry, level 2.5 of a variable-rate entry, and the two-pass
    context models (CompressAI's fixtures): building them needs no Java."""
    from zoo.serve import build_archives

    store = tmp_path_factory.mktemp("ts") / "store"
    for name, backend in (("hp", "torch"), ("hpo", "onnx")):
        build_archives(
            fixture_entry, store, name=name, backend=backend, batch_size=4, max_batch_delay_ms=50, max_pixels=200_000
        )
    build_archives(vr_entry, store, name="hpvr", level=2.5, batch_size=4, max_batch_delay_ms=50, max_pixels=200_000)
    for name, arch in HTTP_CONTEXT_MODELS.items():
        build_archives(arch_entry(arch), store, name=name, max_pixels=200_000)
    return store


@pytest.mark.slow
def test_a_variable_rate_level_round_trips_over_http(server, vr_entry):
    """One level of a variable-rate entry served as its folded standard model: the file names the entry and
    the level, and is the file the in-process codec makes at that level."""
    import zoo
    from zoo.imageio import read_image, to_uint8

    codec = zoo.load_local(vr_entry, quality=2.5)
    body = _png(96, 64)
    status, headers, data = _post(f"{server['inference']}/predictions/hpvr-encode", body)
    assert status == 200, data
    assert bitstream.loads(data).entry.level == 2.5 and headers["x-zoo-entry"] == str(codec.entry)
    assert data == bitstream.dumps(codec.compress(read_image(body)[0]))
    status, _, png = _post(f"{server['inference']}/predictions/hpvr-decode", data)
    assert status == 200
    expected = to_uint8(codec.decompress(bitstream.loads(data))).astype(int)
    assert np.abs(np.asarray(Image.open(io.BytesIO(png))).astype(int) - expected).max() <= 1
    from zoo.errors import InputError
    from zoo.serve import build_archives

    with pytest.raises(InputError, match="variable-rate"):
        build_archives(vr_entry, server["store"], name="nolevel")


@pytest.fixture(scope="module")
def server(store):
    """A real TorchServe over `store`; only the tests that take it are skipped where Java is missing."""
    if shutil.which("java") is None:
        pytest.skip("TorchServe needs Java 17")
    from zoo.serve import start, stop

    state = store.parent / "state"
    info = start(store, state_dir=state, auth=False)
    yield {**info, "store": store}
    stop(state)


@pytest.mark.slow
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


@pytest.mark.slow
def test_encoder_effort_over_http_within_the_archives_default_limit(server, fixture_entry):
    """X-Zoo-Effort through a real TorchServe, on an archive built without its own max_refine_work: effort 1 gives
    the in-process codec's refined file, which the decode endpoint reads; effort 3 on 400x300 pixels is over the
    default limit (effort 2 on a Kodak-sized image) and is a 400 naming the effort that fits."""
    import zoo
    from zoo.handlers.zoo_handler import DEFAULT_MAX_REFINE_WORK
    from zoo.imageio import read_image

    codec = zoo.load_local(fixture_entry)
    body = _png(64, 64)
    status, _, data = _post(f"{server['inference']}/predictions/hp-encode", body, headers={"X-Zoo-Effort": "1"})
    assert status == 200, data
    x = read_image(body)[0]
    assert data == bitstream.dumps(codec.compress(x, effort=1)) != bitstream.dumps(codec.compress(x))
    status, _, png = _post(f"{server['inference']}/predictions/hp-decode", data)
    assert status == 200 and Image.open(io.BytesIO(png)).size == (64, 64)
    status, _, answer = _post(
        f"{server['inference']}/predictions/hp-encode", _png(400, 300), headers={"X-Zoo-Effort": "3"}
    )
    error = json.loads(answer)["error"]
    assert status == 400 and "ask for effort 2 or less" in error
    assert f"limit of {DEFAULT_MAX_REFINE_WORK}:" in error  # the handler's default: the archive carries none


@pytest.mark.slow
@pytest.mark.parametrize("name", list(HTTP_CONTEXT_MODELS))
def test_context_model_round_trip_over_http(server, arch_entry, name):
    """Two-pass context models served over HTTP: the file and the pixels are those of the in-process codec, to
    the byte."""
    import zoo
    from zoo.imageio import read_image, to_uint8

    codec = zoo.load_local(arch_entry(HTTP_CONTEXT_MODELS[name]))
    body = _png(112, 80)
    status, headers, data = _post(f"{server['inference']}/predictions/{name}-encode", body)
    assert status == 200, data
    assert headers["x-zoo-entry"] == str(codec.entry) and codec.entry.arch == HTTP_CONTEXT_MODELS[name]
    with _worker_threads():
        assert data == bitstream.dumps(codec.compress(read_image(body)[0]))
        expected = to_uint8(codec.decompress(bitstream.loads(data)))
    status, headers, png = _post(f"{server['inference']}/predictions/{name}-decode", data)
    assert status == 200 and headers["content-type"].startswith("image/png"), png[:200]
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), expected)


@pytest.mark.slow
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


@pytest.mark.slow
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


@contextmanager
def _worker_threads():
    """Run the in-process codec on a worker's thread count (the archives' threads=1): the last bits of a
    convolution, and so now and then a rounded pixel, depend on it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# Sizes whose latents differ (the fixture downsamples by 64), so no two good requests share a network pass
# and each must equal the in-process codec's single-image result to the byte.
MIXED_SIZES = [(48, 32), (112, 80), (200, 144)]


@pytest.mark.slow
def test_bad_requests_do_not_spoil_their_batch(server, fixture_entry):
    import zoo
    from zoo.imageio import read_image, to_uint8

    codec = zoo.load_local(fixture_entry)
    url = server["inference"]
    images = [_png(w, h, left=100 + 7 * i) for i, (w, h) in enumerate(MIXED_SIZES)]
    with _worker_threads():
        streams = [bitstream.dumps(codec.compress(read_image(body)[0])) for body in images]
        pixels = [to_uint8(codec.decompress(bitstream.loads(stream))) for stream in streams]

    # encode: three images of different sizes and one body that is not an image, in one batch
    answers = _in_one_batch(f"{url}/predictions/hp-encode", [images[0], b"definitely not an image", *images[1:]])
    (bad_status, bad_headers, bad_body), good = answers[1], [answers[0], *answers[2:]]
    assert bad_status == 400 and bad_headers["content-type"].startswith("application/json")
    assert "not an image" in json.loads(bad_body)["error"]
    for (status, headers, data), expected in zip(good, streams, strict=True):
        assert status == 200 and headers["content-type"].startswith("application/octet-stream"), data[:200]
        assert data == expected

    # decode: three streams of different sizes and one whose payload was damaged, in one batch
    corrupt = bytearray(streams[1])
    corrupt[-10] ^= 0xFF  # a payload byte: the last 4 bytes are the file checksum
    answers = _in_one_batch(f"{url}/predictions/hp-decode", [*streams[:2], bytes(corrupt), streams[2]])
    (bad_status, bad_headers, bad_body), good = answers[2], [*answers[:2], answers[3]]
    assert bad_status == 400 and bad_headers["content-type"].startswith("application/json")
    assert "corrupt" in json.loads(bad_body)["error"]
    for (status, headers, png), expected in zip(good, pixels, strict=True):
        assert status == 200 and headers["content-type"].startswith("image/png"), png[:200]
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), expected)


def test_the_handler_ships_inside_the_package():
    """torch-model-archiver gets the handler from the installed package, as a wheel has it, not from a checkout."""
    import zoo
    from zoo.serve import handler_file

    path = handler_file()
    assert path.is_file() and path.resolve().is_relative_to(Path(zoo.__file__).resolve().parent)
    assert "class ZooHandler(BaseHandler)" in path.read_text()


def _load_handler(model_dir, op: str):
    """The archive's handler class run in-process on a real TorchServe Context, as a worker would."""
    import importlib.util

    from ts.context import Context

    from zoo.serve import handler_file

    (model_dir / "zoo_serve.json").write_text(
        json.dumps({"op": op, "backend": "torch", "max_pixels": 200_000, "threads": 1})
    )
    spec = importlib.util.spec_from_file_location("zoo_handler", handler_file())
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    handler = module.ZooHandler()
    context = Context(f"hp-{op}", str(model_dir), {}, 4, None, "test")
    handler.initialize(context)
    return handler, context


def test_unexpected_error_answers_500_for_that_request_only(fixture_entry, tmp_path, monkeypatch):
    from ts.context import RequestProcessor

    import zoo
    from zoo.imageio import read_image

    model_dir = tmp_path / "model"
    shutil.copytree(fixture_entry, model_dir)
    handler, context = _load_handler(model_dir, "encode")
    codec = zoo.load_local(fixture_entry)

    compress_batch = handler.codec.compress_batch

    def fails_on_40_wide(images):  # stands in for a bug that only one input triggers
        if any(x.shape[-1] == 40 for x in images):
            raise RuntimeError("boom")
        return compress_batch(images)

    monkeypatch.setattr(handler.codec, "compress_batch", fails_on_40_wide)
    bodies = [_png(48, 32), _png(40, 40), b"definitely not an image", _png(112, 80)]
    context.request_processor = [RequestProcessor({}) for _ in bodies]
    out = handler.handle([{"body": b} for b in bodies], context)

    assert [context.get_response_status(i)[0] for i in range(4)] == [200, 500, 400, 200]
    assert context.get_response_status(1)[1] == "Internal Server Error"  # standard phrase, not the message
    error = json.loads(out[1])["error"]
    assert "internal error" in error and "boom" not in error  # the traceback goes to the log, not the client
    assert context.get_response_content_type(1) == "application/json"
    for i in (0, 3):
        assert out[i] == bitstream.dumps(codec.compress(read_image(bodies[i])[0]))
        assert context.get_response_headers(i)["X-Zoo-Batch"] == "4"


def test_onnx_archive_carries_its_graphs(store, tmp_path):
    from zoo.entry import read_config
    from zoo.errors import IntegrityError
    from zoo.export.ort_backend import OrtModule
    from zoo.serve import archived_codec

    for op in ("encode", "decode"):
        with zipfile.ZipFile(store / f"hpo-{op}.mar") as z:
            names = set(z.namelist())
            assert {f"onnx/{g}.onnx" for g in ("g_a", "h_a", "h_s", "g_s")} <= names
            assert json.loads(z.read("zoo_serve.json"))["backend"] == "onnx"
            z.extractall(tmp_path / op)
        meta = json.loads((tmp_path / op / "onnx" / "metadata.json").read_text())
        assert meta["weights_fingerprint"] == read_config(tmp_path / op).fingerprint.hex()
    with zipfile.ZipFile(store / "hp-encode.mar") as z:
        assert not any(n.startswith("onnx/") for n in z.namelist())  # the torch archive does not carry them

    # A worker runs the archive's graphs as they are: nothing exported anew.
    codec = archived_codec(tmp_path / "encode", "onnx", threads=1)
    for name in ("g_a", "h_a", "g_s"):
        module = getattr(codec.model, name)
        assert isinstance(module, OrtModule) and module.path == str(tmp_path / "encode" / "onnx" / f"{name}.onnx")
    # Graphs that belong to other weights are refused.
    meta_path = tmp_path / "decode" / "onnx" / "metadata.json"
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "weights_fingerprint": "00" * 16}))
    with pytest.raises(IntegrityError, match="exported from weights"):
        archived_codec(tmp_path / "decode", "onnx")


@pytest.mark.slow
def test_onnx_backend_round_trip_over_http(server, tmp_path):
    from zoo.imageio import read_image, to_uint8
    from zoo.serve import archived_codec

    with zipfile.ZipFile(server["store"] / "hpo-encode.mar") as z:
        z.extractall(tmp_path)
    codec = archived_codec(tmp_path, "onnx", threads=1)  # the graphs the server runs
    url = server["inference"]
    body = _png(112, 80)
    status, headers, data = _post(f"{url}/predictions/hpo-encode", body)
    assert status == 200, data
    with _worker_threads():
        assert data == bitstream.dumps(codec.compress(read_image(body)[0]))
        expected = to_uint8(codec.decompress(bitstream.loads(data)))
    status, headers, png = _post(f"{url}/predictions/hpo-decode", data)
    assert status == 200 and headers["content-type"].startswith("image/png")
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), expected)
    # Streams are interchangeable between the backends.
    assert _post(f"{url}/predictions/hp-decode", data)[0] == 200


def test_checkerboard_onnx_archive_round_trip(arch_entry, tmp_path):
    """A context model's onnx archive: it carries the context graphs, the codec a worker builds from it
    round-trips, and its streams decode with the eager torch codec too."""
    import zoo
    from zoo.imageio import read_image, to_uint8
    from zoo.serve import archived_codec, build_archives

    entry = arch_entry("cheng2020-anchor-checkerboard")
    (encode_mar, _) = build_archives(entry, tmp_path / "store", name="cbo", backend="onnx", max_pixels=200_000)
    with zipfile.ZipFile(encode_mar) as z:
        assert {"onnx/context_prediction.onnx", "onnx/entropy_parameters.onnx"} <= set(z.namelist())
        z.extractall(tmp_path / "model")
    codec = archived_codec(tmp_path / "model", "onnx", threads=1)
    data = bitstream.dumps(codec.compress(read_image(_png(112, 80))[0]))
    expected = to_uint8(codec.decompress(bitstream.loads(data)))
    eager = zoo.load_local(entry)
    assert np.abs(to_uint8(eager.decompress(bitstream.loads(data))).astype(int) - expected).max() <= 1


@pytest.mark.parametrize("arch", ["elic2022-official", "elic2022-chandelier"])
def test_elic_handler_round_trip(arch, arch_entry, tmp_path):
    """ELIC's 11 streams through the archive's handler, run in-process on a real TorchServe Context."""
    from ts.context import RequestProcessor

    import zoo
    from zoo.imageio import to_uint8

    bodies = [_png(48, 32), _png(112, 80)]
    outputs = {}
    for op in ("encode", "decode"):
        model_dir = tmp_path / op
        shutil.copytree(arch_entry(arch), model_dir)
        handler, context = _load_handler(model_dir, op)
        context.request_processor = [RequestProcessor({}) for _ in bodies]
        outputs[op] = handler.handle([{"body": b} for b in (bodies if op == "encode" else outputs["encode"])], context)
        assert [context.get_response_status(i)[0] for i in range(len(bodies))] == [200, 200]
    codec = zoo.load_local(arch_entry(arch))
    for data, png in zip(outputs["encode"], outputs["decode"], strict=True):
        c = bitstream.loads(data)
        assert len(c.tiles[0].streams) == 11
        with _worker_threads():
            expected = to_uint8(codec.decompress(c))
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), expected)


@pytest.mark.slow
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
