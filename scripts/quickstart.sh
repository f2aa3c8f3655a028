#!/usr/bin/env bash
# The main job in one command: install zoo, serve the shipped entries on an embedded Hub mirror (olah on
# 127.0.0.1), then compress and decompress a Kodak image with bmshj2018-hyperprior quality 3 fetched
# through huggingface_hub from that mirror. Usage: bash scripts/quickstart.sh [IMAGE]
set -euo pipefail
cd "$(dirname "$0")/.."

export PIP_DISABLE_PIP_VERSION_CHECK=1
python3 -m pip install -q torch==2.13.0          # first and pinned: an unpinned torch pulls a CUDA build
python3 -m pip install -q -e ".[hub,eval]"

# A cache of our own, so the download below really goes through the Hub protocol.
export HF_HUB_CACHE="$PWD/.hub/hf-cache"
rm -rf "$HF_HUB_CACHE"
HF_ENDPOINT="$(zoo hub serve --quiet --dir .hub/mirror)"
export HF_ENDPOINT
trap 'zoo hub stop --dir .hub/mirror >/dev/null' EXIT
echo "embedded Hub mirror: HF_ENDPOINT=$HF_ENDPOINT"

IMAGE="${1:-../shared/datasets/kodak/kodim23.png}"
mkdir -p out
zoo encode "$IMAGE" out/image.zoo --model bmshj2018-hyperprior --quality 3
zoo info out/image.zoo
zoo decode out/image.zoo out/image.png
python3 - "$IMAGE" out/image.png <<'PY'
import sys
import numpy as np
from PIL import Image
from zoo.evaluation.metrics import psnr_rgb
a = np.asarray(Image.open(sys.argv[1]).convert("RGB"))
b = np.asarray(Image.open(sys.argv[2]).convert("RGB"))
print(f"reconstruction {sys.argv[2]}: PSNR {psnr_rgb(a, b):.2f} dB against {sys.argv[1]}")
PY
