"""CompressAI's published weights by name: served by a real HTTP server on 127.0.0.1 under names carrying their
sha256 prefix, downloaded, verified, converted to entries that reproduce CompressAI's outputs; bad files refused."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from tests.support import fixture_expected, fixture_state_dict, psnr
from zoo.errors import EntryNotFound, HubError, InputError, IntegrityError

# (architecture, how the served file is laid out): CompressAI's current layout, its older one (the factorized
# prior's `_biases.0` / `_bias0` names, the shortcut called `downsample`, no CDF tables, the pre-zip format).
SERVED = {
    "bmshj2018-hyperprior": "legacy",
    "mbt2018-mean": "current",
    "cheng2020-anchor": "legacy-flat",
}


def _legacy(state: dict[str, torch.Tensor], flat: bool) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        if "_quantized_cdf" in key or "_offset" in key or "_cdf_length" in key:
            continue  # an old release saved before `update()`: the tables are rebuilt from the weights
        for new, old in (("biases", "bias"), ("matrices", "matrix"), ("factors", "factor")):
            prefix = f"entropy_bottleneck.{new}."
            if key.startswith(prefix):
                n = key[len(prefix) :]
                key = f"entropy_bottleneck._{old}{n}" if flat else f"entropy_bottleneck._{new}.{n}"
        out[key.replace(".skip.", ".downsample.")] = value
    return out


def _publish(folder: Path, name: str, state: dict, legacy_format: bool = False) -> str:
    """Save a state dict as CompressAI does and name it NAME-<sha256 prefix>.pth.tar, as CompressAI names files."""
    tmp = folder / "tmp.pth.tar"
    torch.save(state, tmp, _use_new_zipfile_serialization=not legacy_format)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    filename = f"{name}-{digest[:8]}.pth.tar"
    tmp.rename(folder / filename)
    return filename


class _Server:
    """Files from a folder; a path under /silent/ is accepted and never answered, one under /short/ announces
    1000 bytes and sends 10."""

    def __init__(self, root: Path):
        stop = self.stop_event = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                if self.path.startswith("/silent/"):
                    stop.wait(60)
                    return
                if self.path.startswith("/short/"):
                    self.send_response(200)
                    self.send_header("Content-Length", "1000")
                    self.end_headers()
                    self.wfile.write(b"0123456789")
                    return
                path = root / self.path.lstrip("/")
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.stop_event.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)


@pytest.fixture(scope="module")
def published_files(tmp_path_factory):
    """Served files and a model table naming them, in CompressAI's table layout."""
    root = tmp_path_factory.mktemp("compressai-files")
    models: dict[str, dict[str, dict[str, str]]] = {}
    for arch, layout in SERVED.items():
        state = fixture_state_dict(arch)
        if layout.startswith("legacy"):
            state = _legacy(state, flat=layout == "legacy-flat")
        models[arch] = {"mse": {"1": _publish(root, f"{arch}-1", state, legacy_format=layout == "legacy")}}
    good = models["bmshj2018-hyperprior"]["mse"]["1"]
    # quality 2: right content, a name promising another hash; quality 3: a name the server does not have
    (root / good).with_name("bmshj2018-hyperprior-2-0badc0de.pth.tar").write_bytes((root / good).read_bytes())
    models["bmshj2018-hyperprior"]["mse"]["2"] = "bmshj2018-hyperprior-2-0badc0de.pth.tar"
    models["bmshj2018-hyperprior"]["mse"]["3"] = "bmshj2018-hyperprior-3-12345678.pth.tar"
    models["bmshj2018-hyperprior"]["mse"]["4"] = "silent/bmshj2018-hyperprior-4-12345678.pth.tar"
    models["bmshj2018-hyperprior"]["mse"]["5"] = "short/bmshj2018-hyperprior-5-12345678.pth.tar"
    # a file whose name and hash agree but whose weights are another architecture's
    models["mbt2018-mean"]["mse"]["2"] = _publish(root, "mbt2018-mean-2", fixture_state_dict("bmshj2018-factorized"))
    table = root / "table.json"
    license = {"hf_id": "bsd-3-clause-clear", "weights": "as CompressAI states them"}
    table.write_text(json.dumps({"root_url": "https://unused.invalid", "license": license, "models": models}))
    server = _Server(root)
    yield {"root": root, "table": table, "url": server.url}
    server.close()


@pytest.fixture
def env(published_files, monkeypatch, tmp_path):
    monkeypatch.setenv("ZOO_COMPRESSAI_MODELS", str(published_files["table"]))
    monkeypatch.setenv("ZOO_COMPRESSAI_URL", published_files["url"] + "/")
    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ZOO_HUB_TIMEOUT", "2")
    return published_files


def _cache(tmp_path: Path) -> Path:
    return tmp_path / "home" / "compressai"


@pytest.mark.parametrize("arch", list(SERVED))
def test_published_checkpoint_becomes_an_entry_that_reproduces_compressai(env, tmp_path, arch):
    import zoo

    codec = zoo.load(arch, quality=1, source="compressai")
    expected, meta = fixture_expected(arch)
    with torch.no_grad():
        assert psnr(codec.model(expected["x"]).x_hat, expected["forward_x_hat"]) >= 60
    (latents,) = codec.model.compress(expected["x"])
    assert abs(8 * sum(len(d) for _, d in latents.streams) - meta["compressed_bits"]) <= 0.01 * meta["compressed_bits"]
    assert psnr(codec.decompress(codec.compress(expected["x"])), expected["decompress_x_hat"]) >= 60
    entry = _cache(tmp_path) / "entries" / arch / "q1-mse"
    config = json.loads((entry / "config.json").read_text())
    served = env["root"] / json.loads(env["table"].read_text())["models"][arch]["mse"]["1"]
    assert config["training"]["sha256"] == hashlib.sha256(served.read_bytes()).hexdigest()
    card = (entry / "README.md").read_text()
    assert "license: bsd-3-clause-clear" in card and env["url"] + "/" + served.name in card
    assert sorted(p.name for p in _cache(tmp_path).iterdir()) == ["entries"]  # no download left behind


def test_cached_entry_loads_without_the_server(env, tmp_path, monkeypatch):
    import zoo

    first = zoo.load("mbt2018-mean", quality=1, source="compressai")
    monkeypatch.setenv("ZOO_COMPRESSAI_URL", "http://127.0.0.1:9")  # nothing listens there
    again = zoo.load("mbt2018-mean", quality=1, source="compressai")
    assert again.fingerprint == first.fingerprint


def test_hash_mismatch_is_refused_and_the_download_deleted(env, tmp_path):
    from zoo.compressai import entry_folder

    with pytest.raises(IntegrityError, match="0badc0de") as info:
        entry_folder("bmshj2018-hyperprior", 2)
    assert "\n" not in str(info.value)
    assert list((_cache(tmp_path) / "entries" / "bmshj2018-hyperprior").iterdir()) == []


def test_wrong_architecture_behind_a_good_name_is_refused(env, tmp_path):
    from zoo.compressai import entry_folder

    with pytest.raises(IntegrityError, match="does not hold mbt2018-mean"):
        entry_folder("mbt2018-mean", 2)
    assert list((_cache(tmp_path) / "entries" / "mbt2018-mean").iterdir()) == []


def test_missing_silent_and_truncated_files_fail_fast(env, tmp_path):
    from zoo.compressai import entry_folder

    with pytest.raises(HubError, match="HTTP 404"):
        entry_folder("bmshj2018-hyperprior", 3)
    with pytest.raises(HubError, match="ended after 10 "):
        entry_folder("bmshj2018-hyperprior", 5)
    assert list((_cache(tmp_path) / "entries" / "bmshj2018-hyperprior").iterdir()) == []
    t0 = time.monotonic()
    with pytest.raises(HubError, match="within 2 s"):
        entry_folder("bmshj2018-hyperprior", 4)
    assert time.monotonic() - t0 < 10


def test_a_trickle_is_cut_off_by_the_overall_deadline(tmp_path, monkeypatch):
    """Each read arrives within the read timeout, but the whole transfer is slower than the floor rate."""
    from zoo.net import download  # what zoo.compressai downloads with

    stop = threading.Event()

    class Trickle(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            while not stop.is_set():
                self.wfile.write(b"x" * 100)
                self.wfile.flush()
                time.sleep(0.2)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    monkeypatch.setenv("ZOO_HUB_TIMEOUT", "1")
    monkeypatch.setenv("ZOO_DOWNLOAD_BASE", "1")
    monkeypatch.setenv("ZOO_DOWNLOAD_MIN_RATE", "50000")
    try:
        t0 = time.monotonic()
        with pytest.raises(HubError, match="was too slow"):
            download(f"http://127.0.0.1:{httpd.server_address[1]}/f", tmp_path / "f")
        assert time.monotonic() - t0 < 8
        assert not (tmp_path / "f").exists()
    finally:
        stop.set()
        httpd.shutdown()
        httpd.server_close()


def test_names_outside_the_table_say_what_exists(env):
    import zoo
    from zoo.compressai import published

    with pytest.raises(EntryNotFound, match="publishes no weights for bmshj2018-factorized-relu"):
        published("bmshj2018-factorized-relu", 1)
    with pytest.raises(InputError, match="needs a quality"):
        published("bmshj2018-hyperprior", None)
    with pytest.raises(EntryNotFound, match="qualities 1, 2, 3, 4, 5, not 7"):
        zoo.load("bmshj2018-hyperprior", quality=7, source="compressai")
    with pytest.raises(InputError, match="unknown source"):
        zoo.load("bmshj2018-hyperprior", quality=1, source="tfc")


def test_the_shipped_table_covers_every_published_architecture_zoo_implements(monkeypatch):
    """Both metrics for every architecture in the table, each a registered one at its qualities, each file name
    carrying a sha256 prefix, under CompressAI's own root URL."""
    from zoo.compressai import base_url, load_table, published
    from zoo.registry import get_arch

    monkeypatch.delenv("ZOO_COMPRESSAI_MODELS", raising=False)
    monkeypatch.delenv("ZOO_COMPRESSAI_URL", raising=False)
    table = load_table()
    assert table["source"]["repository"].endswith("InterDigitalInc/CompressAI") and len(table["source"]["commit"]) == 40
    assert set(table["models"]) == {
        "bmshj2018-factorized",
        "bmshj2018-hyperprior",
        "mbt2018-mean",
        "mbt2018",
        "cheng2020-anchor",
        "cheng2020-attn",
    }
    for arch, metrics in table["models"].items():
        assert set(metrics) == {"mse", "ms-ssim"}
        for metric, files in metrics.items():
            assert sorted(map(int, files)) == list(get_arch(arch).qualities)
            for quality in files:
                model = published(arch, int(quality), metric)
                assert len(model.hash_prefix) >= 8
    assert published("bmshj2018-hyperprior", 3).url == f"{base_url()}/bmshj2018-hyperprior-3-6d87be32.pth.tar"
    assert base_url() == "https://compressai.s3.amazonaws.com/models/v1"


def test_cli_imports_by_name_and_reports_failures_in_one_line(env, tmp_path, capsys):
    import zoo
    from zoo.cli import main

    out = tmp_path / "entry"
    assert main(["import-compressai", "bmshj2018-hyperprior", "--quality", "1", "--out", str(out)]) == 0
    assert zoo.load_local(out).entry.version.endswith("+compressai")
    capsys.readouterr()
    for quality in ("2", "3"):
        args = ["import-compressai", "bmshj2018-hyperprior", "--quality", quality, "--out", str(tmp_path / "x")]
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("zoo: error:"), err
    assert not (tmp_path / "x").exists()


def test_cli_publishes_an_import_to_a_mirror(env, tmp_path):
    from zoo.cli import main

    mirror = tmp_path / "mirror"
    args = ["import-compressai", "mbt2018-mean", "--quality", "1", "--publish", "zoo-test", "--mirror", str(mirror)]
    assert main(args) == 0
    assert (mirror / "models" / "zoo-test" / "mbt2018-mean-q1-mse" / "config.json").is_file()


def test_cli_encode_and_decode_with_compressai_weights(env, tmp_path):
    """A file made with CompressAI's weights names them in its header: `zoo decode` finds them by that name."""
    from tests.support import SAMPLE
    from zoo.cli import main

    stream, png = tmp_path / "a.zoo", tmp_path / "a.png"
    base = ["--model", "bmshj2018-hyperprior", "--quality", "1", "--source", "compressai", "--quiet"]
    assert main(["encode", str(SAMPLE), str(stream), *base]) == 0
    assert main(["decode", str(stream), str(png), "--quiet"]) == 0
    named = tmp_path / "b.png"
    assert main(["decode", str(stream), str(named), *base]) == 0
    assert png.read_bytes() == named.read_bytes() and png.stat().st_size > 0


def test_a_local_path_imports_a_file_as_before(tmp_path):
    import zoo
    from zoo.cli import main

    ckpt = tmp_path / "old.pth.tar"
    torch.save(_legacy(fixture_state_dict("bmshj2018-hyperprior"), flat=False), ckpt)
    out = tmp_path / "e"
    assert main(["import-compressai", str(ckpt), "--arch", "bmshj2018-hyperprior", "--out", str(out)]) == 0
    expected, _ = fixture_expected("bmshj2018-hyperprior")
    codec = zoo.load_local(out)
    assert psnr(codec.decompress(codec.compress(expected["x"])), expected["decompress_x_hat"]) >= 60
