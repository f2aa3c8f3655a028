#!/usr/bin/env bash
# Smoke test of an installed wheel (run by .ci/run from an empty folder, with the wheel's environment first on
# PATH): zoo encode/decode through the embedded Hub mirror, zoo archive, and one TorchServe round trip.
# Usage: bash .ci/wheel_smoke.sh CHECKOUT   (the checkout gives only the entries to serve and the sample image)
set -euo pipefail
CHECKOUT="$(cd "$1" && pwd)"
HERE="$PWD"
export ZOO_HOME="$HERE/zoo-home" HF_HUB_CACHE="$HERE/hf-cache"

python - "$CHECKOUT" <<'PY'
import sys
from importlib import resources
from pathlib import Path

import zoo

where = Path(zoo.__file__).resolve()
assert "site-packages" in where.parts and not where.is_relative_to(Path(sys.argv[1])), f"zoo imported from {where}"
for name in ("py.typed", "manifest.json", "handlers/zoo_handler.py"):
    assert resources.files("zoo").joinpath(name).is_file(), f"the wheel has no zoo/{name}"
print(f"wheel: zoo {zoo.__file__}")
PY

trap 'zoo serve --stop --state "$ZOO_HOME/ts" >/dev/null 2>&1 || true; zoo hub stop >/dev/null 2>&1 || true' EXIT
HF_ENDPOINT="$(zoo hub serve --quiet --entries "$CHECKOUT/model_store/entries")"
export HF_ENDPOINT
zoo encode "$CHECKOUT/samples/kodim23.png" x.zoo --model bmshj2018-hyperprior --quality 3
zoo decode x.zoo x.png

zoo archive bmshj2018-hyperprior --quality 3 --name hp3
test -f "$ZOO_HOME/archives/hp3-encode.mar" && test -f "$ZOO_HOME/archives/hp3-decode.mar"
zoo serve --no-auth --state "$ZOO_HOME/ts" | tee serve.txt
INFERENCE="$(sed -n 's/^inference \([^ ]*\).*/\1/p' serve.txt)"
python - "$INFERENCE" "$CHECKOUT/samples/kodim23.png" x.png <<'PY'
import sys
import urllib.request

import numpy as np
from PIL import Image

url, image, local_png = sys.argv[1:]


def post(path: str, body: bytes) -> tuple[bytes, dict]:
    req = urllib.request.Request(
        url + path, data=body, method="POST", headers={"Content-Type": "application/octet-stream"}
    )
    with urllib.request.urlopen(req, timeout=300) as r:
        return r.read(), dict(r.headers)


with open(image, "rb") as f:
    stream, headers = post("/predictions/hp3-encode", f.read())
png, _ = post("/predictions/hp3-decode", stream)
with open("served.png", "wb") as f:
    f.write(png)
served = np.asarray(Image.open("served.png").convert("RGB")).astype(np.int16)
local = np.asarray(Image.open(local_png).convert("RGB")).astype(np.int16)
# The workers run on 1 thread, `zoo decode` on all cores: float sums in another order may move a pixel by one.
diff = int(np.abs(served - local).max()) if served.shape == local.shape else -1
assert 0 <= diff <= 1, f"TorchServe's round trip differs from `zoo decode`'s (max difference {diff})"
print(f"torchserve: {len(stream)} bytes ({headers.get('X-Zoo-Bpp')} bpp), decoded within {diff} of `zoo decode`'s")
PY
echo "wheel smoke test passed"
