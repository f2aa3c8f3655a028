#!/usr/bin/env bash
# How the fixed-rate v1.0 and v1.1 entries were made: CPU, this repository's training module, 2 threads. Re-run on a GPU
# with far more --steps (and --amp bf16, larger --patch) for competitive models. Data: shared/datasets/photos
# 001-035 for training, 036-039 held out for validation; Kodak only for the model cards' figures.
#
#   bash scripts/train_entries.sh            # every stage; a stage whose entry the manifest lists is skipped
#                                            # (in the working tree or retired: zoo/manifest.json keeps every version)
#   STEPS=700 bash scripts/train_entries.sh  # fine-tuning steps per entry (default 700; factorized 600)
#
# Order (each stage warm-starts from the one before, since CPU training cannot afford scratch runs):
#   1. bmshj2018-hyperprior q3: the headline entry (bootstrapped, then 1,750 steps: see its model card)
#   2. hyperprior q1, q2, q4, q5: fine-tuned at their own lambda from q3 (q5 from q4); then q3 v1.1, 500 more
#      steps on 256-px crops (v1.0 fell below q2's PSNR, and on 128-px crops the hyperprior sees only 2x2 z).
#      The v1.0 entries of q1, q2, q4 and q5 are retired from model_store (superseded by their v1.1, and the
#      200 MB budget); a re-run from scratch makes them again as the starting points of v1.1 and the factorized.
#   3. bmshj2018-factorized q1-q5: g_a and g_s from the hyperprior of the same quality, new entropy bottleneck
#   4. hyperprior q6 and q7: q5 v1.1 grown to the standard N=192, M=320 (zoo.train.widen), then q7 from q6;
#      no q8 (the 200 MB budget)
#   5. mbt2018-mean q1-q3: g_a, g_s, h_a and the z prior from hyperprior q3 v1.1, a new h_s; q1, q2 from q3
set -uo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-runs}
DATA=${DATA:-$RUNS/data}
STEPS=${STEPS:-700}
DS="shared/datasets/photos 001-035 (036-039 held out for validation)"
H=model_store/entries/bmshj2018-hyperprior
F=model_store/entries/bmshj2018-factorized
mkdir -p "$DATA/train" "$DATA/val"
for f in ../shared/datasets/photos/0{01..35}.png; do ln -sf "$(realpath "$f")" "$DATA/train/"; done
for f in ../shared/datasets/photos/0{36..39}.png; do ln -sf "$(realpath "$f")" "$DATA/val/"; done

# released FOLDER: whether zoo/manifest.json lists the entry at that path. Retired versions count: their folders have
# left the working tree but stay released (served, and --init reads them, from the commit the manifest names).
released() {
    python3 -c 'import sys; from zoo.hub import load_manifest; sys.exit(all(e.path != sys.argv[1] for e in load_manifest()))' "$1"
}

# stage ARCH QUALITY STEPS NOTE -- extra zoo-train arguments (the warm start)
stage() {
    local arch=$1 q=$2 steps=$3 note=$4 out
    shift 5
    out=model_store/entries/$arch/q$q-mse/v1.0
    released "$out" && return 0
    # the hyperprior v1.0 of q1, q2, q4 and q5 were never listed: only starting points of their v1.1 and factorized
    [ "$arch" = bmshj2018-hyperprior ] && released "$H/q$q-mse/v1.1" && released "$F/q$q-mse/v1.0" && return 0
    zoo train --arch "$arch" --quality "$q" --train "$DATA/train" --val "$DATA/val" --out "$RUNS/$arch-q$q" \
        --steps "$steps" --batch-size 8 --patch 128 --lr 1e-4 --scheduler cosine --val-every $((steps / 2)) \
        --ckpt-every 100 --workers 1 --threads 2 --quiet --resume "$@" || return 1
    zoo release "$RUNS/$arch-q$q" --checkpoint last.pt --version 1.0 --half --manifest package --out "$out" \
        --eval ../shared/datasets/kodak --dataset-name "$DS" \
        --note "$steps steps (batch 8, 128px crops, cosine from lr 1e-4) $note; CPU, 2 threads"
}

# 1. The headline entry. Its first 2,800 steps were a bootstrap run at lr 3e-4; this reproduces its shape.
if ! released "$H/q3-mse/v1.0"; then
    zoo train --arch bmshj2018-hyperprior --quality 3 --train "$DATA/train" --val "$DATA/val" \
        --out "$RUNS/bmshj2018-hyperprior-q3" --lr 3e-4 --scheduler cosine --patch 128 --batch-size 8 \
        --steps 4550 --val-every 1000 --ckpt-every 250 --threads 2 --workers 1 --resume
    zoo release "$RUNS/bmshj2018-hyperprior-q3" --checkpoint last.pt --version 1.0 --half --manifest package \
        --out "$H/q3-mse/v1.0" --eval ../shared/datasets/kodak --dataset-name "$DS"
fi

# 2. Neighbouring hyperprior qualities, then the headline entry again as v1.1.
stage bmshj2018-hyperprior 4 "$STEPS" "at its own lambda from the quality-3 v1.0 entry" -- --init "$H/q3-mse/v1.0"
stage bmshj2018-hyperprior 5 "$STEPS" "at its own lambda from the quality-4 run" -- \
    --init "$RUNS/bmshj2018-hyperprior-q4/last.pt"
stage bmshj2018-hyperprior 2 "$STEPS" "at its own lambda from the quality-3 v1.0 entry" -- --init "$H/q3-mse/v1.0"
stage bmshj2018-hyperprior 1 "$STEPS" "at its own lambda from the quality-3 v1.0 entry" -- --init "$H/q3-mse/v1.0"
if ! released "$H/q3-mse/v1.1"; then
    zoo train --arch bmshj2018-hyperprior --quality 3 --train "$DATA/train" --val "$DATA/val" \
        --out "$RUNS/bmshj2018-hyperprior-q3-v1.1" --init "$H/q3-mse/v1.0" --steps 500 --batch-size 4 \
        --patch 256 --lr 1e-4 --scheduler cosine --val-every 250 --ckpt-every 100 --workers 1 \
        --threads 2 --quiet --resume
    zoo release "$RUNS/bmshj2018-hyperprior-q3-v1.1" --checkpoint last.pt --version 1.1 --half --manifest package \
        --out "$H/q3-mse/v1.1" --eval ../shared/datasets/kodak --dataset-name "$DS" \
        --note "500 steps (batch 4, 256px crops, cosine from lr 1e-4) at its own lambda from the quality-3 v1.0 entry"
fi

# 2b. v1.1 of q4, q5, q2 and q1: the same 500 steps on 256-px crops (q3 v1.1 showed what they are worth).
for q in 4 5 2 1; do
    released "$H/q$q-mse/v1.1" && continue
    zoo train --arch bmshj2018-hyperprior --quality "$q" --train "$DATA/train" --val "$DATA/val" \
        --out "$RUNS/bmshj2018-hyperprior-q$q-v1.1" --init "$H/q$q-mse/v1.0" --steps 500 --batch-size 4 \
        --patch 256 --lr 1e-4 --scheduler cosine --val-every 250 --ckpt-every 100 --workers 1 --threads 2 \
        --quiet --resume
    zoo release "$RUNS/bmshj2018-hyperprior-q$q-v1.1" --checkpoint last.pt --version 1.1 --half --manifest package \
        --out "$H/q$q-mse/v1.1" --eval ../shared/datasets/kodak --dataset-name "$DS" \
        --note "500 steps (batch 4, 256px crops, cosine from lr 1e-4) at its own lambda from the quality-$q v1.0 entry"
done

# 3. Factorized prior: the hyperprior's transforms, a new entropy bottleneck.
for q in 3 1 2 4 5; do
    stage bmshj2018-factorized "$q" 600 \
        "with g_a and g_s taken from the bmshj2018-hyperprior q$q v1.0 entry and a new entropy bottleneck (its density at lr 5e-3)" -- \
        --init "$H/q$q-mse/v1.0" --init-parts g_a,g_s --entropy-lr 5e-3
done

# 4. The wider qualities, on 256-px crops like the v1.1 passes: q6 is q5 v1.1 grown to the standard N=192, M=320
#    (zoo.train.widen: same reconstruction at step 0, but the new latent channels start random and cost bits),
#    q7 continues from q6's run. q8 is not shipped: a third 24 MB entry would break the 200 MB budget.
wide() {
    local q=$1 steps=$2 note=$3 out=$H/q$1-mse/v1.0
    shift 3
    released "$out" && return 0
    zoo train --arch bmshj2018-hyperprior --quality "$q" --train "$DATA/train" --val "$DATA/val" \
        --out "$RUNS/bmshj2018-hyperprior-q$q" --steps "$steps" --batch-size 4 --patch 256 --lr 1e-4 \
        --scheduler cosine --val-every 250 --ckpt-every 50 --workers 1 --threads 2 --quiet --resume "$@" || return 1
    zoo release "$RUNS/bmshj2018-hyperprior-q$q" --checkpoint last.pt --version 1.0 --half --manifest package \
        --out "$out" --eval ../shared/datasets/kodak --dataset-name "$DS" \
        --note "$steps steps (batch 4, 256px crops, cosine from lr 1e-4) at its own lambda $note"
}
wide 6 500 "from the quality-5 v1.1 entry grown to N=192, M=320 (--init-widen)" --init "$H/q5-mse/v1.1" --init-widen
wide 7 250 "from the quality-6 run's last checkpoint" --init "$RUNS/bmshj2018-hyperprior-q6/last.pt"

# 5. mbt2018-mean (mean-scale hyperprior), on 256-px crops. Its h_s predicts means as well as scales, a different
#    shape from the hyperprior's, so it starts new; g_a, g_s, h_a and the z prior come from the hyperprior q3 v1.1
#    entry. q3: 800 steps at lr 2e-4, then 450 more at 1e-4; q1 and q2: 450 steps at their own lambda from q3's
#    800-step checkpoint, and q1 400 more. q4 and up do not fit the 200 MB budget (about 15 MB each at N=128, M=192).
M=model_store/entries/mbt2018-mean
mrun() {  # mrun RUN QUALITY STEPS LR -- warm start
    local run=$1 q=$2 steps=$3 lr=$4
    shift 5
    zoo train --arch mbt2018-mean --quality "$q" --train "$DATA/train" --val "$DATA/val" --out "$RUNS/$run" \
        --steps "$steps" --batch-size 4 --patch 256 --lr "$lr" --scheduler cosine --val-every "$steps" \
        --ckpt-every 100 --workers 1 --threads 2 --quiet --resume "$@"
}
mrelease() {  # mrelease RUN QUALITY NOTE
    released "$M/q$2-mse/v1.0" && return 0
    zoo release "$RUNS/$1" --checkpoint last.pt --version 1.0 --half --manifest package --out "$M/q$2-mse/v1.0" \
        --eval ../shared/datasets/kodak --dataset-name "$DS" --note "$3; CPU, 2 threads"
}
if ! released "$M/q3-mse/v1.0" || ! released "$M/q1-mse/v1.0" || ! released "$M/q2-mse/v1.0"; then
    mrun mbt2018-mean-q3 3 800 2e-4 -- --init "$H/q3-mse/v1.1" --init-parts g_a,g_s,h_a,entropy_bottleneck || exit 1
    mrun mbt2018-mean-q3b 3 450 1e-4 -- --init "$RUNS/mbt2018-mean-q3/last.pt" || exit 1
    mrun mbt2018-mean-q2 2 450 1e-4 -- --init "$RUNS/mbt2018-mean-q3/last.pt" || exit 1
    mrun mbt2018-mean-q1 1 450 1e-4 -- --init "$RUNS/mbt2018-mean-q3/last.pt" || exit 1
    mrun mbt2018-mean-q1b 1 400 1e-4 -- --init "$RUNS/mbt2018-mean-q1/last.pt" || exit 1
fi
mrelease mbt2018-mean-q3b 3 "800 steps (batch 4, 256px crops, cosine from lr 2e-4) with g_a, g_s, h_a and the z prior from the bmshj2018-hyperprior q3 v1.1 entry and a new h_s (means and scales), then 450 more (cosine from lr 1e-4)"
mrelease mbt2018-mean-q2 2 "450 steps (batch 4, 256px crops, cosine from lr 1e-4) at its own lambda from the mbt2018-mean q3 run's 800-step checkpoint"
mrelease mbt2018-mean-q1b 1 "450 steps (batch 4, 256px crops, cosine from lr 1e-4) at its own lambda from the mbt2018-mean q3 run's 800-step checkpoint, then 400 more (cosine from lr 1e-4)"

# 6. The variable-rate families that zoo.load serves today are made by their recipes, not by this script:
#    zoo train --recipe recipes/<family>.toml, then zoo release --recipe (docs/training.md).
