"""TorchServe handler for zoo entries: one archive per entry and operation (`<name>-encode`, `<name>-decode`).

The archive carries the entry folder (config.json, model.safetensors, README.md) and `zoo_serve.json`
(operation, backend, limits). The handler is a thin caller of the installed `zoo` package: the same Codec,
bitstream and image I/O as the library and the CLI, batched over the requests TorchServe groups together.

encode: body = image bytes (any format Pillow reads) -> zoo bitstream (application/octet-stream), with
        X-Zoo-Bpp, X-Zoo-Entry and X-Zoo-Fingerprint headers.
decode: body = zoo bitstream -> PNG.
Errors answer that request only, as JSON {"error": ...}: 400 for bad input, 413 for images over the limit.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ts.torch_handler.base_handler import BaseHandler

from zoo import bitstream
from zoo.errors import InputError, ZooError


class ZooHandler(BaseHandler):
    def initialize(self, context: Any) -> None:
        import torch

        import zoo

        model_dir = context.system_properties["model_dir"]
        with open(os.path.join(model_dir, "zoo_serve.json")) as f:
            self.settings = json.load(f)
        self.op = self.settings["op"]
        self.max_pixels = int(self.settings.get("max_pixels", 24_000_000))
        torch.set_num_threads(int(self.settings.get("threads", 1)))
        self.codec = zoo.load_local(model_dir, backend=self.settings.get("backend", "torch"))
        self.initialized = True

    @staticmethod
    def _body(row: dict) -> bytes:
        body = row.get("data") if row.get("data") is not None else row.get("body")
        if isinstance(body, bytearray | memoryview):
            body = bytes(body)
        if isinstance(body, str):
            body = body.encode("latin-1")
        if not isinstance(body, bytes) or not body:
            raise InputError("the request body is empty: send the image (encode) or the zoo file (decode) as the body")
        return body

    def _error(self, context: Any, idx: int, status: int, message: str) -> bytes:
        context.set_response_status(status, message[:200], idx)
        context.set_response_content_type(idx, "application/json")
        return json.dumps({"error": message}).encode()

    def handle(self, data: list[dict], context: Any) -> list[bytes]:
        results: list[bytes | None] = [None] * len(data)
        items: dict[int, Any] = {}
        for idx, row in enumerate(data):
            try:
                body = self._body(row)
                items[idx] = self._parse(body)
            except InputError as exc:
                status = 413 if "over the limit" in str(exc) else 400
                results[idx] = self._error(context, idx, status, str(exc))
            except ZooError as exc:
                results[idx] = self._error(context, idx, 400, str(exc))
        if items:
            order = list(items)
            try:
                outputs = self._run([items[i] for i in order])
            except ZooError:
                outputs = [self._run_one(items[i]) for i in order]  # isolate the bad one
            for idx, out in zip(order, outputs, strict=True):
                if isinstance(out, ZooError):
                    results[idx] = self._error(context, idx, 400, str(out))
                else:
                    results[idx] = self._respond(context, idx, items[idx], out)
        return [r if r is not None else b"" for r in results]

    # -- per operation --------------------------------------------------------------------------
    def _parse(self, body: bytes) -> Any:
        if self.op == "encode":
            from zoo.imageio import read_image

            x, _ = read_image(body, max_pixels=self.max_pixels)
            return x
        c = bitstream.loads(body)
        if c.height * c.width > self.max_pixels:
            raise InputError(f"image of {c.width}x{c.height} pixels is over the limit of {self.max_pixels}")
        self.codec.check_compatible(c)
        return c

    def _run(self, items: list[Any]) -> list[Any]:
        if self.op == "encode":
            return self.codec.compress_batch(items)
        return self.codec.decompress_batch(items)

    def _run_one(self, item: Any) -> Any:
        try:
            return self._run([item])[0]
        except ZooError as exc:
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
