"""Checks on files we did not make, done before they cost anything: regular files only, bounded JSON, a
safetensors header read without its data and compared with the model a config describes, and CDF tables.

Every refusal is a typed error from `zoo.errors` naming the file (and the tensor) and what was expected.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import torch

from zoo.errors import IntegrityError, ZooError

MAX_JSON_DEPTH = 32  # a zoo config nests 4 deep; a model card's front matter is not JSON
MAX_HEADER_BYTES = 16 << 20  # a safetensors header of 16 MiB describes ~100,000 tensors
# Each symbol of a table keeps a frequency of at least 1 out of 2**16: no table is longer than this.
MAX_CDF_LENGTH = (1 << 16) + 1
SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: str | Path, error: type[ZooError] = IntegrityError) -> IO[bytes]:
    """`path` opened for reading in binary, if it is a regular file; else `error` saying what it is.

    Opened without blocking first, so a FIFO with no writer cannot hang us, then checked on the open file
    descriptor itself (no race with a rename). FileNotFoundError passes through for the caller to word."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise
    except IsADirectoryError:
        raise error(f"{path} is a directory, not a file") from None
    except OSError as exc:
        raise error(f"{path} cannot be read ({exc.strerror or type(exc).__name__})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise error(f"{path} is {_kind(mode)}, not a regular file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def check_regular(path: str | Path, error: type[ZooError] = IntegrityError) -> None:
    """Refuse anything but a regular file at `path` (following links), without opening it."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise error(f"{path} cannot be read ({exc.strerror or type(exc).__name__})") from None
    if not stat.S_ISREG(mode):
        raise error(f"{path} is {_kind(mode)}, not a regular file")


_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(rb"[\[\]{}]")


def json_depth(raw: bytes) -> int:
    """How deep arrays and objects nest in a JSON text (strings skipped), without parsing it."""
    depth = deepest = 0
    for match in _BRACKETS.finditer(_STRING.sub(b'""', raw)):
        depth += 1 if match.group() in (b"[", b"{") else -1
        deepest = max(deepest, depth)
    return deepest


def parse_json(raw: bytes, what: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """JSON from an untrusted file, refused with IntegrityError when it nests deeper than `max_depth` (the
    parser would recurse) or is not JSON."""
    depth = json_depth(raw)
    if depth > max_depth:
        raise IntegrityError(f"{what} nests {depth} levels deep, more than the {max_depth} allowed")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise IntegrityError(f"{what} is not valid JSON ({str(exc)[:200]})") from None


def safetensors_header(path: str | Path) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    """Each tensor's dtype and shape as a safetensors file declares them, read without its data: an 8-byte
    little-endian length, a JSON header, then the data, whose extent each tensor's offsets must fit exactly."""
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        if len(head) < 8:
            raise IntegrityError(f"{path} is not a safetensors file: {size} bytes")
        length = int.from_bytes(head, "little")
        if length > MAX_HEADER_BYTES or 8 + length > size:
            raise IntegrityError(f"{path} declares a {length}-byte header in a {size}-byte file")
        header = parse_json(f.read(length), f"{path}'s safetensors header")
    if not isinstance(header, dict):
        raise IntegrityError(f"{path}'s safetensors header is not a JSON object")
    data_bytes = size - 8 - length
    tensors: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {}
    extents = []
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = SAFETENSORS_DTYPES[spec["dtype"]]
            shape = tuple(spec["shape"])
            begin, end = spec["data_offsets"]
            if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in (*shape, begin, end)):
                raise ValueError
        except (KeyError, TypeError, ValueError):
            raise IntegrityError(f"{path}: tensor {name!r} has no valid dtype, shape and data_offsets") from None
        numel = 1
        for n in shape:
            numel *= n
        if end - begin != numel * dtype.itemsize or end > data_bytes:
            raise IntegrityError(
                f"{path}: tensor {name!r} ({spec['dtype']} {list(shape)}) does not fit its data_offsets "
                f"[{begin}, {end}) in {data_bytes} bytes of data"
            )
        tensors[name] = (dtype, shape)
        extents.append((begin, end))
    covered = 0
    for begin, end in sorted(extents):
        if begin != covered:
            raise IntegrityError(f"{path}: its tensors overlap or leave gaps in the data")
        covered = end
    if covered != data_bytes:
        raise IntegrityError(f"{path}: its tensors cover {covered} of its {data_bytes} bytes of data")
    return tensors


def _table_rows(name: str, header: Mapping[str, tuple[torch.dtype, tuple[int, ...]]]) -> int | None:
    """How many tables the entropy model owning CDF buffer `name` must have, when its header fixes it."""
    prefix = name.rsplit(".", 1)[0]
    scale_table = header.get(f"{prefix}.scale_table")
    if scale_table is not None:
        return scale_table[1][0] if len(scale_table[1]) == 1 else -1
    return None


def check_fits(
    model_on_meta: torch.nn.Module,
    header: Mapping[str, tuple[torch.dtype, tuple[int, ...]]],
    weights_dtype: str,
    where: str,
) -> None:
    """The tensors a safetensors header declares against the state dict of the model the config describes
    (built on the meta device: nothing allocated): the same names, each with its shape and a dtype the entry's
    `weights_dtype` allows; the CDF tables, sized by their data, with consistent shapes within the bounds
    of 16-bit tables. Raises IntegrityError naming the first tensor that does not fit."""
    from zoo.entropy import TABLE_BUFFERS

    expected = model_on_meta.state_dict()
    missing, unexpected = sorted(set(expected) - set(header)), sorted(set(header) - set(expected))
    if missing or unexpected:
        problems = [f"{w} {', '.join(k[:3])}" for w, k in (("missing", missing), ("unexpected", unexpected)) if k]
        described = type(model_on_meta).__name__
        raise IntegrityError(f"{where}: weights do not fit the {described} its config describes: {'; '.join(problems)}")
    stored_float = {"float32": (torch.float32,), "float16": (torch.float16, torch.float32)}[weights_dtype]
    for name, tensor in expected.items():
        dtype, shape = header[name]
        leaf = name.rsplit(".", 1)[-1]
        if leaf in TABLE_BUFFERS:
            ndim = 2 if leaf == "_quantized_cdf" else 1
            if dtype != torch.int32 or len(shape) != ndim:
                raise IntegrityError(
                    f"{where}: {name} should be int32 of {ndim} dimension(s), not {dtype} {list(shape)}"
                )
            if leaf == "_quantized_cdf" and shape[1] > MAX_CDF_LENGTH:
                raise IntegrityError(f"{where}: {name} has tables of {shape[1]} entries, over {MAX_CDF_LENGTH}")
            rows = header[name.rsplit(".", 1)[0] + "._quantized_cdf"][1][:1]
            if shape[:1] != rows:
                raise IntegrityError(f"{where}: {name} has {list(shape)} rows, its _quantized_cdf {list(rows)}")
            wanted = _table_rows(name, header)
            if wanted is not None and shape[0] != wanted:
                raise IntegrityError(f"{where}: {name} has {shape[0]} tables for {wanted} scales")
            continue
        if tensor.numel() and shape != tuple(tensor.shape):
            raise IntegrityError(f"{where}: {name} has shape {list(shape)}, expected {list(tensor.shape)}")
        allowed = stored_float if tensor.is_floating_point() else (tensor.dtype,)
        if dtype not in allowed:
            raise IntegrityError(
                f"{where}: {name} is {dtype}, expected {' or '.join(map(str, allowed))} ({weights_dtype} weights)"
            )
        if not tensor.numel() and len(shape) != tensor.dim():
            raise IntegrityError(f"{where}: {name} has {len(shape)} dimensions, expected {tensor.dim()}")


def check_tables(model: torch.nn.Module, where: str) -> None:
    """Every entropy model's integer CDF tables, validated once now (lengths, offsets, each row from 0 to the
    precision's total and strictly increasing) rather than at the first `compress`: IntegrityError names the
    tensor."""
    from zoo.entropy import EntropyModel

    for prefix, module in model.named_modules():
        if isinstance(module, EntropyModel) and module.has_tables:
            try:
                module.tables()
            except (ValueError, ZooError) as exc:
                raise IntegrityError(f"{where}: {prefix}._quantized_cdf: {exc}") from None
