#!/usr/bin/env bash
# The main job in one command: install zoo, serve the shipped entries on an embedded Hub mirror (olah on
# 127.0.0.1), then compress and decompress an image with bmshj2018-hyperprior quality 3 fetched through
# huggingface_hub from that mirror. Needs only this checkout (the sample image is in samples/).
# Usage: bash scripts/quickstart.sh [IMAGE]      (default: samples/kodim23.png)
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE="${1:-samples/kodim23.png}"
OUT=out
LOG="$OUT/quickstart.log"
mkdir -p "$OUT"
: >"$LOG"
export PIP_DISABLE_PIP_VERSION_CHECK=1

# One line per step; the commands' own output goes to the log, shown only when a step fails.
step() {
    local what="$1"
    shift
    printf '%-64s' "$what ..."
    local t0=$SECONDS
    if "$@" >>"$LOG" 2>&1; then
        echo " done ($((SECONDS - t0)) s)"
    else
        echo " FAILED"
        echo "--- last lines of $LOG:" >&2
        tail -n 25 "$LOG" >&2
        exit 1
    fi
}

[ -f "$IMAGE" ] || { echo "quickstart: no image at $IMAGE" >&2; exit 2; }
# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build.
step "installing torch 2.13.0 (CPU)" python3 -m pip install torch==2.13.0
step "installing zoo with the [hub,eval] extras (editable)" python3 -m pip install -e ".[hub,eval]"

# A cache of our own, so the download below really goes through the Hub protocol.
export HF_HUB_CACHE="$PWD/.hub/hf-cache"
rm -rf "$HF_HUB_CACHE"
step "starting the embedded Hub mirror over model_store/entries" zoo hub serve --quiet --dir .hub/mirror
HF_ENDPOINT="$(zoo hub endpoint --dir .hub/mirror)"
export HF_ENDPOINT
trap 'zoo hub stop --dir .hub/mirror >/dev/null 2>&1 || true' EXIT
echo "  HF_ENDPOINT=$HF_ENDPOINT"

t0=$(date +%s.%N)
step "encoding $IMAGE with bmshj2018-hyperprior q3" \
    zoo encode "$IMAGE" "$OUT/image.zoo" --model bmshj2018-hyperprior --quality 3
t1=$(date +%s.%N)
zoo info "$OUT/image.zoo" >"$OUT/image.info.txt"
step "decoding $OUT/image.zoo" zoo decode "$OUT/image.zoo" "$OUT/image.png"
t2=$(date +%s.%N)

python3 - "$IMAGE" "$OUT/image.zoo" "$OUT/image.png" "$t0" "$t1" "$t2" <<'PY'
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from zoo.evaluation.metrics import psnr_rgb

image, zoo_file, png, t0, t1, t2 = sys.argv[1:]
a = np.asarray(Image.open(image).convert("RGB"))
b = np.asarray(Image.open(png).convert("RGB"))
size = Path(zoo_file).stat().st_size
h, w = a.shape[:2]
print(
    f"result: {image} ({w}x{h}) -> {zoo_file} {size:,} bytes, {8 * size / (h * w):.4f} bpp; "
    f"{png} PSNR {psnr_rgb(a, b):.2f} dB; encode {float(t1) - float(t0):.1f} s, decode {float(t2) - float(t1):.1f} s "
    "(each including the model download and load)"
)
PY
echo "outputs: $OUT/image.zoo, $OUT/image.png, $OUT/image.info.txt (zoo info); log of every step: $LOG"
