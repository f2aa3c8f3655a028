#!/usr/bin/env bash
# Runs ON the lent GPU machine, from the repository root that the device tool copied there (see
# docs/gpu-training.md). Two modes, one per device call:
#
#   bash scripts/gpu/device.sh start MINUTES   # install the carried wheels, build the coder, start training
#                                              # under setsid, follow it for MINUTES, then collect into $OUT
#   bash scripts/gpu/device.sh poll MINUTES    # a later call on the same warm machine: follow, then collect
#
# The run's settings come from .gpu/plan.env, written by `python scripts/gpu_train.py prepare`.
set -uo pipefail
cd "$(dirname "$0")/../.."
mode=${1:?start or poll}
minutes=${2:-8}
OUT=${OUT:?the device tool sets OUT}
# shellcheck disable=SC1091
source .gpu/plan.env
export PYTHONUNBUFFERED=1

if [ -d .gpu/wheels ] && ls .gpu/wheels/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/zoo-site .gpu/wheels/*.whl || exit 1
fi
export PYTHONPATH=/tmp/zoo-site:$PWD

if [ "$mode" = start ]; then
    python3 setup.py -q build_ext --inplace >.gpu/build.log 2>&1 || { tail -20 .gpu/build.log; exit 1; }
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi (rehearsal)"
    # setsid: the training process outlives this call and keeps running until the machine goes back
    setsid nohup python3 -m zoo.cli train --arch "$ARCH" --train .gpu/data/train --val .gpu/data/val \
        --out .gpu/run --init .gpu/init.pt --steps "$STEPS" --batch-size "$BATCH" --patch "$PATCH" \
        --lr "$LR" --scheduler cosine --val-every "$VAL_EVERY" --ckpt-every "$CKPT_EVERY" \
        --workers "$WORKERS" --threads "$THREADS" $AMP $WIDTHS --quiet --resume \
        >.gpu/train.log 2>&1 </dev/null &
    echo "started training pid $!"
fi

deadline=$(( $(date +%s) + minutes * 60 ))
while [ "$(date +%s)" -lt "$deadline" ]; do
    if [ -f .gpu/run/summary.json ]; then break; fi  # finished
    if ! pgrep -f "zoo.cli train --arch $ARCH" >/dev/null; then echo "training is not running"; break; fi
    sleep 15
done
tail -n 5 .gpu/run/log.csv 2>/dev/null
tail -n 3 .gpu/train.log
python3 scripts/gpu_train.py collect .gpu/run "$OUT"
