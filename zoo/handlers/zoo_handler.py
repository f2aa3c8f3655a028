"""TorchServe handler for zoo entries: one archive per entry and operation (`<name>-encode`, `<name>-decode`).

The archive carries the entry folder (config.json, model.safetensors, README.md), `zoo_serve.json` (operation,
backend, limits) and, for the onnx backend, the exported graphs in `onnx/`. The handler is a thin caller of the
installed `zoo` package: the same Codec, bitstream and image I/O as the library and the CLI, batched over the
requests TorchServe groups together.

encode: body = image bytes (any format Pillow reads) -> zoo bitstream (application/octet-stream), with
        X-Zoo-Bpp, X-Zoo-Entry and X-Zoo-Fingerprint headers.
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
                items[idx] = self._parse(self._body(row))
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

    # -- per operation --------------------------------------------------------------------------
    def _parse(self, body: bytes) -> Any:
        if self.op == "encode":
            from zoo.imageio import read_image

            x, _ = read_image(body, max_pixels=self.max_pixels)
            return x
        c = bitstream.loads(body)
        if c.height * c.width > self.max_pixels:
            raise ImageTooLarge(f"image of {c.width}x{c.height} pixels is over the limit of {self.max_pixels}")
        self.codec.check_compatible(c)
        return c

    def _run(self, items: list[Any]) -> list[Any]:
        if self.op == "encode":
            return self.codec.compress_batch(items)
        return self.codec.decompress_batch_uint8(items)

    def _run_one(self, item: Any) -> Any:
        try:
            return self._run([item])[0]
        except Exception as exc:
            return exc

    def _respond(self, context: Any, idx: int, item: Any, out: Any) -> bytes:
        if self.op == "encode":
            data = bitstream.dumps(out)
            h, w = item.shape[-2:]
            context.set_response_content_type(idx, "application/octet-stream")
            context.set_response_header(idx, "X-Zoo-Bpp", f"{8 * len(data) / (h * w):.6f}")
            context.set_response_header(idx, "X-Zoo-Entry", str(self.codec.entry))
            context.set_response_header(idx, "X-Zoo-Fingerprint", self.codec.fingerprint.hex())
            return data
        from zoo.imageio import png_bytes

        context.set_response_content_type(idx, "image/png")
        context.set_response_header(idx, "X-Zoo-Entry", str(self.codec.entry))
        return png_bytes(out)
