"""Serving with TorchServe: model archives of zoo entries, config.properties, start and stop by pid.

Each entry is archived twice, as `<name>-encode` and `<name>-decode` (TorchServe routes by model name:
POST /predictions/<name>-encode with an image, POST /predictions/<name>-decode with a zoo file). An archive
for the onnx backend also carries the exported graphs in `onnx/`, so its workers load them instead of
exporting at startup.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from zoo.entry import ENTRY_FILES, read_config
from zoo.errors import EntryNotFound, InputError, IntegrityError, ServeError
from zoo.procs import executable, free_port, pid_alive, start_process, stop_group, zoo_home

if TYPE_CHECKING:
    from zoo.codec import Codec

MAX_BODY = 256 * 1024 * 1024  # a 24-megapixel image as PNG, or its reconstruction, fits
OPS = ("encode", "decode")
BACKENDS = ("torch", "onnx")
ONNX_DIR = "onnx"  # folder of exported graphs inside an onnx-backend archive


def handler_file() -> Path:
    """The TorchServe handler module, shipped inside the package (a wheel has it as a checkout does)."""
    return Path(str(resources.files("zoo.handlers").joinpath("zoo_handler.py")))


def default_store() -> Path:
    """Where `zoo archive` writes and `zoo serve` reads archives: $ZOO_HOME/archives (~/.cache/zoo/archives).
    Build outputs, never mixed with the released entries in a checkout's model_store/entries."""
    return zoo_home() / "archives"


def default_state() -> Path:
    return zoo_home() / "torchserve"


def archive_name(entry_dir: str | Path, name: str | None = None, level: float | None = None) -> str:
    if name:
        base = name
    else:
        from zoo.compressed import format_level

        e = read_config(entry_dir).entry
        point = format_level(level) if level is not None else str(e.quality)
        base = f"{e.arch}-q{point}-{e.metric}-v{e.version}"
    return re.sub(r"[^A-Za-z0-9_-]", "-", base)


def _check_level(entry_dir: str | Path, level: float | None) -> float | None:
    """The level an archive serves: required for a variable-rate entry, refused for a fixed-rate one."""
    from zoo.registry import get_arch

    info = read_config(entry_dir)
    if info.variable_rate:
        if level is None:
            raise InputError(f"{info.entry.arch} is variable-rate: give the quality (level) to serve")
        return get_arch(info.entry.arch).check_level(level)
    if level is not None and level != info.entry.quality:
        raise EntryNotFound(f"{entry_dir} is the fixed-rate entry {info.entry}: it has no level {level}")
    return None


def build_archives(
    entry_dir: str | Path,
    store: str | Path | None = None,
    *,
    name: str | None = None,
    backend: str = "torch",
    batch_size: int = 4,
    max_batch_delay_ms: int = 20,
    max_pixels: int = 24_000_000,
    threads: int = 1,
    level: float | None = None,
    max_refine_work: int | None = None,
) -> list[Path]:
    """`<name>-encode.mar` and `<name>-decode.mar` in `store`, built with torch-model-archiver.

    With backend="onnx" the transforms are exported once here and both archives carry the graphs in `onnx/`.
    A variable-rate entry is archived at one `level` (the standard model it folds into there).
    `max_refine_work`: the encoder effort one request may buy, as refinement steps times pixels (None: the
    handler's default, effort 2 on a Kodak-sized image)."""
    level = _check_level(entry_dir, level)
    if backend not in BACKENDS:
        raise ServeError(f"unknown backend {backend!r}; backends are {', '.join(BACKENDS)}")
    base = archive_name(entry_dir, name, level)
    store = Path(store or default_store())
    store.mkdir(parents=True, exist_ok=True)
    archiver = executable("torch-model-archiver")
    if archiver is None:
        raise ServeError("torch-model-archiver is not installed: pip install 'zoo-codecs[serve]'")
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        # Everything in `payload` lands at the archive's root (torch-model-archiver copies a folder's contents).
        payload = Path(tmp) / "payload"
        payload.mkdir()
        for f in ENTRY_FILES:
            shutil.copyfile(Path(entry_dir) / f, payload / f)
        if backend == "onnx":
            export_onnx_graphs(entry_dir, payload / ONNX_DIR, level)
        model_config = Path(tmp) / "model-config.yaml"
        model_config.write_text(
            f"minWorkers: 1\nmaxWorkers: 1\nbatchSize: {batch_size}\nmaxBatchDelay: {max_batch_delay_ms}\n"
            "responseTimeout: 300\n"
        )
        for op in OPS:
            (payload / "zoo_serve.json").write_text(
                json.dumps(
                    {
                        "op": op,
                        "backend": backend,
                        "max_pixels": max_pixels,
                        "threads": threads,
                    }
                    | ({"level": level} if level is not None else {})
                    | ({"max_refine_work": max_refine_work} if max_refine_work is not None else {})
                )
            )
            cmd = [
                archiver,
                "--model-name",
                f"{base}-{op}",
                "--version",
                "1.0",
                "--handler",
                str(handler_file()),
                "--extra-files",
                str(payload),
                "--config-file",
                str(model_config),
                "--export-path",
                str(store),
                "--force",
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise ServeError(f"torch-model-archiver failed: {proc.stderr.strip()[-300:]}")
            out.append(store / f"{base}-{op}.mar")
    return out


def export_onnx_graphs(entry_dir: str | Path, out_dir: str | Path, level: float | None = None) -> dict[str, Path]:
    """The entry's transforms as ONNX graphs, with a metadata.json naming the entry and its weights fingerprint
    (the same metadata `zoo export` writes), so a worker can check the graphs belong to the weights beside them."""
    from zoo.entry_codec import codec_from_entry
    from zoo.export import entry_metadata, export_graphs

    codec = codec_from_entry(entry_dir, level=level)
    return export_graphs(codec.model, out_dir, ("onnx",), metadata=entry_metadata(codec.entry, codec.fingerprint))


def archived_codec(
    model_dir: str | Path, backend: str = "torch", threads: int | None = None, level: float | None = None
) -> Codec:
    """The codec a worker serves from its unpacked archive: the entry's weights (at `level` for a variable-rate
    entry), and for the onnx backend the graphs the archive carries (checked against the weights' fingerprint,
    never re-exported)."""
    from zoo.codec import Codec
    from zoo.entry_codec import codec_from_entry

    if backend == "torch":
        return codec_from_entry(model_dir, level=level)
    if backend != "onnx":
        raise InputError(f"unknown backend {backend!r}; backends are {', '.join(BACKENDS)}")
    from zoo.export.ort_backend import onnx_backend_from_folder

    folded = codec_from_entry(model_dir, level=level)
    model, info = folded.model, folded
    graphs = Path(model_dir) / ONNX_DIR
    try:
        meta = json.loads((graphs / "metadata.json").read_text())
    except FileNotFoundError:
        raise EntryNotFound(
            f"{model_dir} has no {ONNX_DIR}/metadata.json: rebuild the archive with `zoo archive ... --backend onnx`"
        ) from None
    except ValueError as exc:
        raise IntegrityError(f"{graphs / 'metadata.json'} is not valid JSON ({exc})") from None
    if meta.get("weights_fingerprint") != info.fingerprint.hex():
        raise IntegrityError(
            f"the graphs in {graphs} were exported from weights {str(meta.get('weights_fingerprint'))[:12]}, "
            f"not from this entry's {info.fingerprint.hex()[:12]}"
        )
    if meta.get("level") != (None if level is None else float(level)):
        raise IntegrityError(f"the graphs in {graphs} were exported at level {meta.get('level')}, not {level}")
    return Codec(onnx_backend_from_folder(model, graphs, threads=threads), info.entry, info.fingerprint)


def write_config(
    path: str | Path,
    store: str | Path,
    *,
    inference_port: int,
    management_port: int,
    metrics_port: int,
    auth: bool = True,
    workers: int = 1,
) -> Path:
    lines = [
        f"inference_address=http://127.0.0.1:{inference_port}",
        f"management_address=http://127.0.0.1:{management_port}",
        f"metrics_address=http://127.0.0.1:{metrics_port}",
        f"model_store={Path(store).resolve()}",
        f"max_request_size={MAX_BODY}",
        f"max_response_size={MAX_BODY}",
        "metrics_mode=prometheus",
        f"default_workers_per_model={workers}",
        "install_py_dep_per_model=false",
        "disable_system_metrics=true",
        f"disable_token_authorization={'false' if auth else 'true'}",
        "enable_model_api=false",
        "default_response_timeout=300",
    ]
    Path(path).write_text("\n".join(lines) + "\n")
    return Path(path)


def start(
    store: str | Path | None = None,
    models: list[str] | None = None,
    *,
    state_dir: str | Path | None = None,
    auth: bool = True,
    timeout: float = 180.0,
    ports: tuple[int, int, int] | None = None,
) -> dict:
    """Start TorchServe in its own process group on 127.0.0.1; wait until the listed models answer."""
    state = Path(state_dir or default_state()).resolve()
    state.mkdir(parents=True, exist_ok=True)
    stop(state)
    store = Path(store or default_store())
    exe = executable("torchserve")
    if exe is None or not shutil.which("java"):
        raise ServeError("TorchServe needs `pip install 'zoo-codecs[serve]'` and Java 17 on PATH")
    inf, mgmt, met = ports or (free_port(), free_port(), free_port())
    cfg = write_config(
        state / "config.properties", store, inference_port=inf, management_port=mgmt, metrics_port=met, auth=auth
    )
    models = models or sorted(p.name for p in store.glob("*.mar"))
    if not models:
        raise ServeError(f"no model archives in {store}: build them with `zoo archive` first")
    env = {
        **os.environ,
        "TMPDIR": str(state),
        "LOG_LOCATION": str(state / "logs"),
        "METRICS_LOCATION": str(state / "logs"),
    }
    cmd = [
        exe,
        "--start",
        "--foreground",
        "--ts-config",
        str(cfg),
        "--model-store",
        str(store.resolve()),
        "--ncs",
        *(["--disable-token-auth"] if not auth else []),
        "--models",
        *models,
    ]
    (state / "torchserve.out").unlink(missing_ok=True)
    proc = start_process(cmd, cwd=state, log=state / "torchserve.out", env=env)
    info = {
        "pid": proc.pid,
        "inference": f"http://127.0.0.1:{inf}",
        "management": f"http://127.0.0.1:{mgmt}",
        "metrics": f"http://127.0.0.1:{met}",
        "models": [m.removesuffix(".mar") for m in models],
        "state": str(state),
    }
    (state / "server.json").write_text(json.dumps(info, indent=2))
    try:
        _wait_ready(info, proc, timeout, state)
    except ServeError:
        stop(state)
        raise
    return info


def _headers(state: Path) -> dict[str, str]:
    keys = state / "key_file.json"
    if keys.exists():
        token = json.loads(keys.read_text()).get("management", {}).get("key")
        if token:
            return {"Authorization": f"Bearer {token}"}
    return {}


def _wait_ready(info: dict, proc: subprocess.Popen, timeout: float, state: Path) -> None:
    deadline = time.monotonic() + timeout
    pending = set(info["models"])
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServeError(f"TorchServe exited at startup; see {state / 'torchserve.out'}")
        for m in list(pending):
            req = urllib.request.Request(f"{info['management']}/models/{m}", headers=_headers(state))
            try:
                with urllib.request.urlopen(req, timeout=2) as r:
                    status = json.loads(r.read())[0]["workers"]
                if any(w.get("status") == "READY" for w in status):
                    pending.discard(m)
            except (OSError, ValueError, KeyError, IndexError):
                pass
        if not pending:
            return
        time.sleep(0.5)
    raise ServeError(f"TorchServe models {sorted(pending)} not ready within {timeout:.0f} s")


def running(state_dir: str | Path | None = None) -> dict | None:
    path = Path(state_dir or default_state()) / "server.json"
    if not path.exists():
        return None
    info = json.loads(path.read_text())
    return info if pid_alive(int(info["pid"])) else None


def stop(state_dir: str | Path | None = None, timeout: float = 20.0) -> bool:
    """Stop the TorchServe started from this state folder (its whole process group), by pid."""
    path = Path(state_dir or default_state()) / "server.json"
    if not path.exists():
        return False
    pid = int(json.loads(path.read_text())["pid"])
    path.unlink()
    return stop_group(pid, timeout)
