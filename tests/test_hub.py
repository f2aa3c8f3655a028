"""Entries through a real Hub protocol server: olah on 127.0.0.1 over a git mirror, started here."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import write_manifest
from tests.support import fixture_dir, fixture_expected, fixture_model, psnr
from zoo.entry import CONFIG_NAME, ENTRY_FILES, WEIGHTS_NAME, load_entry, save_entry, sha256_file
from zoo.errors import EntryNotFound, HubError, IntegrityError
from zoo.mirror import start_server, stop_server
from zoo.publish import publish_to_mirror

REPO = "zoo-test/hyperprior-q1-mse"


def _manifest_entry(folder: Path, version: str) -> dict:
    return {
        "arch": "bmshj2018-hyperprior",
        "quality": 1,
        "metric": "mse",
        "version": version,
        "repo": REPO,
        "revision": f"v{version}",
        "files": {f: sha256_file(folder / f) for f in ENTRY_FILES},
        "path": str(folder),
    }


@pytest.fixture(scope="module")
def hub(tmp_path_factory, fixture_entry):
    """Two versions of one entry published into a mirror and served by olah; yields (endpoint, entries)."""
    root = tmp_path_factory.mktemp("hub")
    v2 = root / "v2"
    model = fixture_model("bmshj2018-hyperprior")
    changed = type(model)(N=32, M=48)
    changed.load_state_dict(model.state_dict())
    with torch.no_grad():
        changed.g_s[0].bias.add_(0.01)
    save_entry(changed, v2, arch="bmshj2018-hyperprior", quality=1, version="0.2")
    publish_to_mirror(fixture_entry, root / "mirror", REPO, "0.1")
    publish_to_mirror(v2, root / "mirror", REPO, "0.2")
    manifest = write_manifest(
        root / "manifest.json", [_manifest_entry(fixture_entry, "0.1"), _manifest_entry(v2, "0.2")]
    )
    pid, endpoint = start_server(root / "mirror", root / "state")
    yield {"endpoint": endpoint, "manifest": manifest, "v1": fixture_entry, "v2": v2, "root": root}
    stop_server(root / "state")


@pytest.fixture
def env(hub, tmp_path, monkeypatch):
    import huggingface_hub.constants as hfc

    monkeypatch.setenv("HF_ENDPOINT", hub["endpoint"])
    monkeypatch.setenv("ZOO_MANIFEST", str(hub["manifest"]))
    monkeypatch.setattr(hfc, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", False)
    return hub


def _same_weights(codec, folder: Path) -> bool:
    model, _ = load_entry(folder)
    a, b = codec.model.state_dict(), model.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_publish_load_gives_identical_weights_and_pins_versions(env):
    import zoo

    newest = zoo.load("bmshj2018-hyperprior", quality=1)
    assert newest.entry.version == "0.2" and _same_weights(newest, env["v2"])
    pinned = zoo.load("bmshj2018-hyperprior", quality=1, version="0.1")
    assert pinned.entry.version == "0.1" and _same_weights(pinned, env["v1"])
    by_repo = zoo.load(f"hf-hub:{REPO}@v0.1")
    assert by_repo.fingerprint == pinned.fingerprint
    with pytest.raises(EntryNotFound, match="versions: 0.1, 0.2"):
        zoo.load("bmshj2018-hyperprior", quality=1, version="9.9")
    with pytest.raises(EntryNotFound, match="released: q1-mse"):
        zoo.load("bmshj2018-hyperprior", quality=2)
    with pytest.raises(EntryNotFound, match="architectures are"):
        zoo.load("nope", quality=1)
    with pytest.raises(EntryNotFound):
        zoo.load(f"hf-hub:{REPO}@v7.0")


def _assert_not_cached(cache: Path, served: Path) -> None:
    """Neither the snapshot link nor the blob behind it is left: no file in the cache holds the served bytes."""
    assert not list(cache.rglob(WEIGHTS_NAME)), "the snapshot link is still there"
    blobs = [p for p in cache.rglob("*") if p.is_file() and not p.is_symlink()]
    assert blobs, "the test must see the cache's other files"  # config.json was downloaded and kept
    digest = sha256_file(served)
    assert not [p for p in blobs if sha256_file(p) == digest], "the bad blob is still in the cache"


def test_tampered_download_is_refused_and_removed(env, tmp_path, monkeypatch):
    import zoo

    manifest = json.loads(Path(env["manifest"]).read_text())
    manifest["entries"][0]["files"][WEIGHTS_NAME] = "0" * 64  # the served file no longer matches
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(manifest))
    monkeypatch.setenv("ZOO_MANIFEST", str(bad))
    with pytest.raises(IntegrityError, match="removed from the cache"):
        zoo.load("bmshj2018-hyperprior", quality=1, version="0.1")
    _assert_not_cached(tmp_path / "hf-cache", env["v1"] / WEIGHTS_NAME)


def test_truncated_blob_on_the_server_is_refused_and_removed(env, tmp_path, monkeypatch):
    """The manifest is right, the server holds a truncated weights file: the download itself is bad."""
    import zoo

    bad = tmp_path / "truncated"
    shutil.copytree(env["v1"], bad)
    weights = (bad / WEIGHTS_NAME).read_bytes()
    (bad / WEIGHTS_NAME).write_bytes(weights[: len(weights) // 2])
    repo = "zoo-test/hyperprior-q1-truncated"
    publish_to_mirror(bad, env["root"] / "mirror", repo, "0.3")
    line = _manifest_entry(env["v1"], "0.3") | {"repo": repo, "revision": "v0.3"}  # true sums of the good files
    manifest = write_manifest(tmp_path / "m.json", [line])
    monkeypatch.setenv("ZOO_MANIFEST", str(manifest))
    with pytest.raises(IntegrityError, match="removed from the cache"):
        zoo.load("bmshj2018-hyperprior", quality=1, version="0.3")
    _assert_not_cached(tmp_path / "hf-cache", bad / WEIGHTS_NAME)


def test_offline_after_first_load_uses_the_cache(env, monkeypatch, tmp_path):
    import huggingface_hub.constants as hfc

    import zoo

    first = zoo.load("bmshj2018-hyperprior", quality=1, version="0.1")
    monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    again = zoo.load("bmshj2018-hyperprior", quality=1, version="0.1")
    assert again.fingerprint == first.fingerprint
    monkeypatch.setattr(hfc, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(HubError, match="cache"):
        zoo.load("bmshj2018-hyperprior", quality=1, version="0.1")


def test_unreachable_hub_names_the_endpoint(env, monkeypatch, tmp_path):
    import time

    import zoo

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # a closed port
    t0 = time.monotonic()
    with pytest.raises(HubError, match="127.0.0.1:9") as info:
        zoo.load("bmshj2018-hyperprior", quality=1, version="0.1")
    assert time.monotonic() - t0 <= 5 and "\n" not in str(info.value)


@pytest.fixture
def silent_server():
    """A real socket on 127.0.0.1 that accepts connections (the kernel completes them) and never answers."""
    import socket

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


def test_silent_hub_fails_within_30_s_and_the_cache_still_answers(env, monkeypatch, silent_server):
    """At the default timeout a silent endpoint is a one-line HubError naming it in <= 30 s (huggingface_hub
    alone was still retrying after 280 s); an entry already in the cache loads without it."""
    import time

    import zoo

    first = zoo.load("bmshj2018-hyperprior", quality=1, version="0.1")
    monkeypatch.setenv("HF_ENDPOINT", silent_server)
    monkeypatch.delenv("ZOO_HUB_TIMEOUT", raising=False)
    t0 = time.monotonic()
    with pytest.raises(HubError, match=silent_server.removeprefix("http://")) as info:
        zoo.load("bmshj2018-hyperprior", quality=1, version="0.2")  # not cached
    assert time.monotonic() - t0 <= 30 and "\n" not in str(info.value)
    monkeypatch.setenv("ZOO_HUB_TIMEOUT", "1")
    again = zoo.load("bmshj2018-hyperprior", quality=1, version="0.1")
    assert again.fingerprint == first.fingerprint


def test_compressai_import_loads_and_reproduces_its_outputs(tmp_path):
    import zoo
    from zoo.cli import main

    for arch in ("bmshj2018-hyperprior", "mbt2018-mean"):
        out = tmp_path / arch
        assert (
            main(
                [
                    "import-compressai",
                    str(fixture_dir(arch) / "compressai_state_dict.pth"),
                    "--arch",
                    arch,
                    "--quality",
                    "1",
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
        codec = zoo.load_local(out)
        expected, meta = fixture_expected(arch)
        with torch.no_grad():
            assert psnr(codec.model(expected["x"]).x_hat, expected["forward_x_hat"]) >= 60
        x_hat = codec.decompress(codec.compress(expected["x"]))
        assert psnr(x_hat, expected["decompress_x_hat"]) >= 60


def test_import_takes_train_py_checkpoints_with_ddp_prefixes(tmp_path, capsys):
    """CompressAI's train.py saves {"epoch", "state_dict", ...}; DataParallel adds "module." to every key."""
    import zoo
    from tests.support import fixture_state_dict
    from zoo.cli import main

    sd = fixture_state_dict("bmshj2018-factorized")
    ckpt = tmp_path / "checkpoint.pth.tar"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in sd.items()}, "loss": 1.0}, ckpt)
    out = tmp_path / "entry"
    assert main(["import-compressai", str(ckpt), "--arch", "bmshj2018-factorized", "--out", str(out)]) == 0
    codec = zoo.load_local(out)
    assert codec.entry.quality == 0  # no --quality: the entry says it is not one of the standard qualities
    own = codec.model.state_dict()
    assert all(torch.equal(own[k].float(), v.float()) for k, v in sd.items() if k in own and v.is_floating_point())
    assert main(["import-compressai", str(ckpt), "--arch", "bmshj2018-hyperprior", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "zoo: error:" in err[0], err


def test_corrupt_entry_folders_are_integrity_errors(fixture_entry, tmp_path):
    import zoo

    bad = tmp_path / "bad"
    shutil.copytree(fixture_entry, bad)
    raw = bytearray((bad / WEIGHTS_NAME).read_bytes())
    raw[-5] ^= 0xFF
    (bad / WEIGHTS_NAME).write_bytes(bytes(raw))
    with pytest.raises(IntegrityError, match="fingerprint"):
        zoo.load_local(bad)
    (bad / CONFIG_NAME).write_text("{not json")
    with pytest.raises(IntegrityError):
        zoo.load_local(bad)
    with pytest.raises(EntryNotFound):
        zoo.load_local(tmp_path / "missing")


def test_cli_publish_list_and_hub_errors(env, tmp_path, capsys):
    """`zoo publish --mirror` → loadable through the server; `zoo list --json`; Hub errors as one line, exit 2."""
    import zoo
    from zoo.cli import main

    assert main(["publish", str(env["v1"]), "--repo", "zoo-test/cli-published", "--version", "0.1",
                 "--mirror", str(env["root"] / "mirror")]) == 0  # fmt: skip
    assert "zoo-test/cli-published v0.1" in capsys.readouterr().out
    loaded = zoo.load("hf-hub:zoo-test/cli-published@v0.1")
    assert _same_weights(loaded, env["v1"])

    assert main(["list", "--all", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(e["version"], e["revision"]) for e in listed] == [("0.1", "v0.1"), ("0.2", "v0.2")]

    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (32, 32), (120, 30, 200)).save(image)
    out = str(tmp_path / "x.zoo")
    for args, message in [
        (["--model", "bmshj2018-hyperprior", "--quality", "1", "--version", "9.9"], "versions: 0.1, 0.2"),
        (["--model", "bmshj2018-hyperprior", "--quality", "5"], "released: q1-mse"),
    ]:
        assert main(["encode", str(image), out, *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err


@pytest.mark.slow
def test_hub_serve_and_stop_over_the_shipped_entries(tmp_path, monkeypatch):
    """`zoo hub serve` builds git repos from the manifest's entries, olah serves them, `zoo hub stop` ends it."""
    import os
    import subprocess
    import sys

    from zoo.hub import load_manifest

    state = tmp_path / "state"
    cli = [sys.executable, "-m", "zoo.cli", "hub"]
    endpoint = subprocess.run([*cli, "serve", "--dir", str(state), "--quiet"], capture_output=True, text=True,
                              check=True, timeout=300).stdout.strip()  # fmt: skip
    pid = int((state / "olah.pid").read_text().split()[0])
    try:
        assert endpoint.startswith("http://127.0.0.1:")
        import huggingface_hub.constants as hfc

        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        monkeypatch.setattr(hfc, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
        monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", False)
        import zoo
        from zoo.entry import version_key

        newest = max(load_manifest(), key=lambda e: (e.quality == 3, version_key(e.version)))
        codec = zoo.load(newest.arch, quality=newest.quality, version=newest.version)
        assert codec.entry.version == newest.version
    finally:
        stopped = subprocess.run([*cli, "stop", "--dir", str(state)], capture_output=True, text=True, timeout=60)
    assert "stopped" in stopped.stdout
    with pytest.raises(ProcessLookupError):
        for _ in range(50):
            os.kill(pid, 0)
            import time

            time.sleep(0.1)


def test_one_version_ordering_everywhere(fixture_entry, tmp_path, monkeypatch, capsys):
    """The resolver, `zoo list` and the mirror builder order versions alike: 1.10 after 1.9, 0-rc1 before 0."""
    from zoo.cli import main
    from zoo.hub import load_manifest, resolve
    from zoo.mirror import _entry_subpath, build_mirror

    lines = [_manifest_entry(fixture_entry, v) for v in ("1.9", "1.10", "0-rc1", "0")]
    manifest = write_manifest(tmp_path / "manifest.json", lines)
    monkeypatch.setenv("ZOO_MANIFEST", str(manifest))
    assert resolve("bmshj2018-hyperprior", 1).version == "1.10"
    assert main(["list", "--all"]) == 0
    listed = [line.split()[3] for line in capsys.readouterr().out.splitlines()[1:]]
    assert listed == ["0-rc1", "0", "1.9", "1.10"]
    entries_dir = tmp_path / "entries"
    for e in load_manifest():
        shutil.copytree(fixture_entry, entries_dir / _entry_subpath(e))
    published = build_mirror(tmp_path / "mirror", load_manifest(), entries_dir).published
    assert [p.rsplit("@", 1)[1] for p in published] == ["0-rc1", "0", "1.9", "1.10"]
    with pytest.raises(EntryNotFound, match="no version latest; versions: 0-rc1, 0, 1.9, 1.10"):
        resolve("bmshj2018-hyperprior", 1, version="latest")


@pytest.fixture
def fast_deadlines(monkeypatch):
    monkeypatch.setenv("ZOO_HUB_TIMEOUT", "1")
    monkeypatch.setenv("ZOO_DOWNLOAD_BASE", "1")
    monkeypatch.setenv("ZOO_DOWNLOAD_MIN_RATE", "10")


def _hub_refuses(monkeypatch, endpoint: str, pattern: str) -> float:
    import time

    from zoo.hub import download_entry

    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    t0 = time.monotonic()
    with pytest.raises(HubError, match=pattern) as info:
        download_entry("zoo-test/absent", "v1")
    assert "\n" not in str(info.value)
    return time.monotonic() - t0


def test_hub_that_drips_ends_at_the_deadline_for_the_size_it_declares(env, monkeypatch, fast_deadlines):
    # config.json declared as 20 bytes, sent one byte per 0.5 s: every read is within the 1 s read timeout, and
    # huggingface_hub alone waited the whole drip out; the deadline is 1 s + 20 B / 10 B/s = 3 s.
    from tests.faults import FaultServer

    with FaultServer("drip", size=20, interval=0.5) as server:
        assert _hub_refuses(monkeypatch, server.url, "config.json was too slow: not done after 3") < 6


def test_hub_server_error_names_the_status(env, monkeypatch, fast_deadlines):
    from tests.faults import FaultServer

    with FaultServer("500") as server:
        assert _hub_refuses(monkeypatch, server.url, "HTTP 500 Internal Server Error") < 4


def test_hub_whose_headers_drip_is_given_up_on(env, monkeypatch, fast_deadlines):
    from tests.faults import FaultServer

    with FaultServer("drip-headers", size=20, interval=0.3) as server:
        assert _hub_refuses(monkeypatch, server.url, "not in the local cache|did not finish") < 6


def test_hub_file_declared_larger_than_an_entry_may_be_is_not_downloaded(env, monkeypatch, fast_deadlines):
    from tests.faults import FaultServer

    with FaultServer("drip", size=5 << 20, interval=0.5) as server:
        assert _hub_refuses(monkeypatch, server.url, "5242880 bytes .* more than an entry's config.json") < 3


def test_a_stream_naming_an_entry_with_other_weights_is_refused_before_the_weights_download(env, tmp_path):
    """A header that names version 0.1 but carries 0.2's weights fingerprint (a retired version named by an
    edited header): refused from the 0.1 config alone, and 0.1's weights never fetched."""
    import huggingface_hub.constants as hfc

    from zoo.compressed import EntryId
    from zoo.errors import BitstreamError
    from zoo.resolve import load_released

    v2 = load_entry(env["v2"])[1].fingerprint
    with pytest.raises(BitstreamError, match=f"needs weights {v2.hex()[:12]}"):
        load_released(EntryId("bmshj2018-hyperprior", 1, "mse", "0.1"), fingerprint=v2)
    cached = [p.name for p in Path(hfc.HF_HUB_CACHE).rglob("*") if p.is_file() or p.is_symlink()]
    assert CONFIG_NAME in cached and WEIGHTS_NAME not in cached
    assert load_released(EntryId("bmshj2018-hyperprior", 1, "mse", "0.2"), fingerprint=v2).fingerprint == v2


def test_a_warm_start_takes_hub_repositories_and_released_names_through_the_resolver(env):
    """`zoo train --init` resolves its argument as zoo.load does: hf-hub:ORG/NAME@REV and ARCH:QUALITY."""
    from zoo.registry import create_model
    from zoo.train.trainer import load_init_weights

    for spec, folder in ((f"hf-hub:{REPO}@v0.1", env["v1"]), ("bmshj2018-hyperprior:1", env["v2"])):
        model = create_model("bmshj2018-hyperprior", N=32, M=48)
        assert load_init_weights(model, spec) == spec
        expected, _ = load_entry(folder)
        mine, theirs = model.state_dict(), expected.state_dict()
        assert all(torch.equal(mine[k], theirs[k]) for k in theirs), spec
