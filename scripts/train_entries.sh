#!/usr/bin/env bash
# How the shipped entries were made (CPU, this repository's training module). Re-run on a GPU with far
# more --steps for competitive models. Data: shared/datasets/photos 001-035 for training, 036-039 held out
# for validation; Kodak only for the model cards' figures.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-runs}
DATA=${DATA:-$RUNS/data}
mkdir -p "$DATA/train" "$DATA/val"
for f in ../shared/datasets/photos/0{01..35}.png; do ln -sf "$(realpath "$f")" "$DATA/train/"; done
for f in ../shared/datasets/photos/0{36..39}.png; do ln -sf "$(realpath "$f")" "$DATA/val/"; done

# bmshj2018-hyperprior quality 3: the headline entry.
zoo train --arch bmshj2018-hyperprior --quality 3 --train "$DATA/train" --val "$DATA/val" --out "$RUNS/hp3" \
    --lr 3e-4 --scheduler cosine --patch 128 --batch-size 8 --steps "${STEPS:-5000}" --val-every 1000 \
    --ckpt-every 250 --threads 2 --workers 1 ${INIT:+--init "$INIT"} --resume
zoo release "$RUNS/hp3" --checkpoint last.pt --version "${VERSION:-1.0}" --half --manifest package \
    --out "model_store/entries/bmshj2018-hyperprior/q3-mse/v${VERSION:-1.0}" --eval ../shared/datasets/kodak \
    --dataset-name "shared/datasets/photos 001-035 (036-039 held out for validation)"

# Neighbouring qualities: warm-started from quality 3 and fine-tuned at their own lambda.
for q in ${QUALITIES:-}; do
    zoo train --arch bmshj2018-hyperprior --quality "$q" --train "$DATA/train" --val "$DATA/val" \
        --out "$RUNS/hp$q" --init "$RUNS/hp3/last.pt" --lr 1e-4 --scheduler cosine --patch 128 --batch-size 8 \
        --steps "${FT_STEPS:-300}" --val-every "${FT_STEPS:-300}" --threads 1 --workers 0 --resume
    zoo release "$RUNS/hp$q" --checkpoint last.pt --version "${VERSION:-1.0}" --half --manifest package \
        --out "model_store/entries/bmshj2018-hyperprior/q$q-mse/v${VERSION:-1.0}" --eval ../shared/datasets/kodak \
        --dataset-name "shared/datasets/photos 001-035 (036-039 held out for validation)"
done
