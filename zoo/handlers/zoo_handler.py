"""TorchServe handler for zoo entries: one archive per entry and operation (`<name>-encode`, `<name>-decode`).

The archive carries the entry folder (config.json, model.safetensors, README.md), `zoo_serve.json` (operation,
backend, limits) and, for the onnx backend, the exported graphs in `onnx/`. The handler is a thin caller of the
installed `zoo` package: the same Codec, bitstream and image I/O as the library and the CLI, batched over the
requests TorchServe groups together.

encode: body = image bytes (any format Pillow reads) -> zoo bitstream (application/octet-stream), with
        X-Zoo-Bpp, X-Zoo-Entry and X-Zoo-Fingerprint headers. An `effort` (0-3, docs/effort.md) comes as the
        X-Zoo-Effort header or an `effort` form field; the server refuses (400) an effort whose refinement
        steps times the image's pixels exceed its `max_refine_work` (zoo_serve.json).
decode: body = zoo bitstream -> PNG.
Every response carries X-Zoo-Batch, the number of requests in the batch the worker handled it in.
Every request gets its own answer, whatever happens to the others in its batch: JSON {"error": ...} with 400
for bad input, 413 for images over the limit, 500 for an unexpected failure (logged with its traceback).
"""

from __future__ import annotations

import json
import logging
import os
from http import HTTPStatus
from typing import Any

from ts.torch_handler.base_handler import BaseHandler

from zoo import bitstream
from zoo.errors import ImageTooLarge, InputError, ZooError

logger = logging.getLogger(__name__)

# Refinement steps x pixels one encode request may ask for, unless zoo_serve.json says otherwise: effort 2
# on a Kodak-sized image (100 steps x 768 x 512 = 39,321,600), a couple of CPU-minutes.
DEFAULT_MAX_REFINE_WORK = 40_000_000


def status_for(exc: BaseException) -> int:
    """The HTTP status a failure answers with: the request's fault (4xx) or ours (500)."""
    if isinstance(exc, ImageTooLarge):
        return 413
    if isinstance(exc, ZooError):
        return 400
    return 500


class ZooHandler(BaseHandler):
    def initialize(self, context: Any) -> None:
        import torch

        from zoo.serve import archived_codec

        model_dir = context.system_properties["model_dir"]
        with open(os.path.join(model_dir, "zoo_serve.json")) as f:
            self.settings = json.load(f)
        self.op = self.settings["op"]
        self.max_pixels = int(self.settings.get("max_pixels", 24_000_000))
        self.max_refine_work = int(self.settings.get("max_refine_work", DEFAULT_MAX_REFINE_WORK))
        threads = int(self.settings.get("threads", 1))
        torch.set_num_threads(threads)
        self.codec = archived_codec(
            model_dir, backend=self.settings.get("backend", "torch"), threads=threads, level=self.settings.get("level")
        )
        self.initialized = True

    @staticmethod
    def _body(row: dict) -> bytes:
        body = row.get("data") if row.get("data") is not None else row.get("body")
        if isinstance(body, bytearray | memoryview):
            body = bytes(body)
        if isinstance(body, str):
            # TorchServe hands over a form field's value (x-www-form-urlencoded, multipart text) as text: bytes
            # survive it only as Latin-1; anything else was a form, not a file
            try:
                body = body.encode("latin-1")
            except UnicodeEncodeError:
                raise InputError(
                    "the request body arrived as text that is not the file's bytes (a form?): send the image "
                    "(encode) or the zoo file (decode) as the raw body with Content-Type application/octet-stream"
                ) from None
        if body is None and any(not str(k).startswith("__") for k in row):
            # TorchServe's front end parsed the body as form fields (Content-Type x-www-form-urlencoded or
            # multipart without a "data" field): the bytes are gone, so say how to send them
            raise InputError(
                "the request body arrived as form fields, not as a file: send the image (encode) or the zoo file "
                "(decode) as the raw body with Content-Type application/octet-stream"
            )
        if not isinstance(body, bytes) or not body:
            raise InputError("the request body is empty: send the image (encode) or the zoo file (decode) as the body")
        return body

    def _error(self, context: Any, idx: int, exc: BaseException) -> bytes:
        status = status_for(exc)
        if status >= 500:
            logger.error("%s request %d of its batch failed", self.op, idx, exc_info=exc)
            message = f"internal error while serving {self.op} ({type(exc).__name__}); see the worker log"
        else:
            message = str(exc)
        # The reason phrase travels in the HTTP status line: keep it the standard one (ASCII, no newlines);
        # the message goes in the JSON body.
        context.set_response_status(status, HTTPStatus(status).phrase, idx)
        context.set_response_content_type(idx, "application/json")
        return json.dumps({"error": message}).encode()

    def handle(self, data: list[dict], context: Any) -> list[bytes]:
        """One answer per request: any failure, ours or the input's, is confined to the request it belongs to."""
        results: list[bytes | None] = [None] * len(data)
        items: dict[int, Any] = {}
        for idx, row in enumerate(data):
            context.set_response_header(idx, "X-Zoo-Batch", str(len(data)))
            try:
                items[idx] = self._parse(self._body(row), self._effort(context, idx, row))
            except Exception as exc:
                results[idx] = self._error(context, idx, exc)
        outputs: dict[int, Any] = {}
        if items:
            order = list(items)
            try:
                outputs = dict(zip(order, self._run([items[i] for i in order]), strict=True))
            except Exception:  # one bad item fails the shared pass: run each alone to find it
                outputs = {i: self._run_one(items[i]) for i in order}
        for idx, out in outputs.items():
            if isinstance(out, Exception):
                results[idx] = self._error(context, idx, out)
                continue
            try:
                results[idx] = self._respond(context, idx, items[idx], out)
            except Exception as exc:
                results[idx] = self._error(context, idx, exc)
        return [r if r is not None else b"" for r in results]

    def _effort(self, context: Any, idx: int, row: dict) -> int:
        """The request's encoder effort: its `effort` form field or X-Zoo-Effort header, 0 without either."""
        value = row.get("effort")
        if value is None:
            try:
                value = context.get_request_header(idx, "X-Zoo-Effort")
            except (AttributeError, KeyError, IndexError, TypeError):
                value = None
        if value is None:
            return 0
        text = bytes(value).decode("latin-1") if isinstance(value, bytes | bytearray) else str(value)
        from zoo.refine import EFFORTS, check_effort

        try:
            return check_effort(int(text.strip()))
        except ValueError:
            raise InputError(f"effort must be one of {', '.join(map(str, EFFORTS))}, not {text[:20]!r}") from None

    # -- per operation --------------------------------------------------------------------------
    def _parse(self, body: bytes, effort: int = 0) -> Any:
        if self.op == "encode":
            from zoo.imageio import read_image
            from zoo.refine import EFFORTS

            x, _ = read_image(body, max_pixels=self.max_pixels)
            pixels = int(x.shape[-2]) * int(x.shape[-1])
            work = EFFORTS[effort].steps * pixels
            if work > self.max_refine_work:
                allowed = [e for e, level in EFFORTS.items() if level.steps * pixels <= self.max_refine_work]
                raise InputError(
                    f"effort {effort} on {x.shape[-1]}x{x.shape[-2]} pixels is {work} refinement step-pixels, over "
                    f"this server's limit of {self.max_refine_work}: ask for effort {max(allowed)} or less"
                )
            return x, effort
        c = bitstream.loads(body)
        if c.height * c.width > self.max_pixels:
            raise ImageTooLarge(f"image of {c.width}x{c.height} pixels is over the limit of {self.max_pixels}")
        self.codec.check_compatible(c)
        return c

    def _run(self, items: list[Any]) -> list[Any]:
        if self.op == "encode":
            if all(effort == 0 for _, effort in items):
                return self.codec.compress_batch([x for x, _ in items])
            return [self.codec.compress(x, effort=effort) for x, effort in items]
        return self.codec.decompress_batch_uint8(items)

    def _run_one(self, item: Any) -> Any:
        try:
            return self._run([item])[0]
        except Exception as exc:
            return exc

    def _respond(self, context: Any, idx: int, item: Any, out: Any) -> bytes:
        if self.op == "encode":
            data = bitstream.dumps(out)
            h, w = item[0].shape[-2:]
            context.set_response_content_type(idx, "application/octet-stream")
            context.set_response_header(idx, "X-Zoo-Bpp", f"{8 * len(data) / (h * w):.6f}")
            context.set_response_header(idx, "X-Zoo-Entry", str(self.codec.entry))
            context.set_response_header(idx, "X-Zoo-Fingerprint", self.codec.fingerprint.hex())
            return data
        from zoo.imageio import png_bytes

        context.set_response_content_type(idx, "image/png")
        context.set_response_header(idx, "X-Zoo-Entry", str(self.codec.entry))
        return png_bytes(out)
