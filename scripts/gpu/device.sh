#!/usr/bin/env bash
# Runs ON the lent GPU machine, from the repository root that the device tool copied there (see
# docs/gpu-training.md). Three modes, one per device call:
#
#   bash scripts/gpu/device.sh start MINUTES   # install the carried wheels, build the coder, start one training
#                                              # per --arch under setsid, follow them for at most MINUTES (or
#                                              # until all finish), then collect each into $OUT/ARCH
#   bash scripts/gpu/device.sh poll MINUTES    # a later call on the same warm machine: follow, then collect
#   bash scripts/gpu/device.sh again MINUTES [LR]
#                                              # a later call on the same warm machine, after start finished:
#                                              # each run's last.pt starts a new cosine of MINUTES - 1 minutes
#                                              # (peak LR, default half the plan's; the old runs move to
#                                              # .gpu/runs-N), followed for MINUTES, then collected
#
# The run's settings come from .gpu/plan.env, written by `python scripts/gpu_train.py prepare`.
set -uo pipefail
cd "$(dirname "$0")/../.."
mode=${1:?start, poll or again}
case "$mode" in start|poll|again) ;; *) echo "device.sh: unknown mode $mode (start, poll or again)" >&2; exit 2 ;; esac
minutes=${2:-8}
OUT=${OUT:?the device tool sets OUT}
# shellcheck disable=SC1091
source .gpu/plan.env
export PYTHONUNBUFFERED=1

if [ -d .gpu/wheels ] && ls .gpu/wheels/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/zoo-site .gpu/wheels/*.whl || exit 1
fi
export PYTHONPATH=/tmp/zoo-site:$PWD

budget="--steps $STEPS"  # the cosine over steps, or (MINUTES) over the clock
positive() { awk -v v="${1:-0}" 'BEGIN { exit !(v + 0 > 0) }'; }
if positive "${MINUTES:-0}"; then budget="--max-minutes $MINUTES"; fi
ema=""
if positive "${EMA:-0}"; then ema="--ema $EMA"; fi

if [ "$mode" = again ]; then
    # the warm machine's finished runs become the inits of a second, shorter cycle (a warm restart)
    for arch in $ARCHS; do
        if [ ! -f ".gpu/runs/$arch/last.pt" ]; then
            echo "again: no .gpu/runs/$arch/last.pt on this machine (again follows a start on the same warm machine)"
            exit 1
        fi
        if pgrep -f "zoo.cli train --arch $arch " >/dev/null; then echo "again: $arch is still training"; exit 1; fi
    done
    n=1
    while [ -d ".gpu/runs-$n" ]; do n=$((n + 1)); done
    for arch in $ARCHS; do cp ".gpu/runs/$arch/last.pt" ".gpu/init/$arch.pt"; done
    mv .gpu/runs ".gpu/runs-$n"
    if positive "${MINUTES:-0}"; then
        MINUTES=$(awk -v m="$minutes" 'BEGIN { print (m > 2 ? m - 1 : m / 2) }')
        budget="--max-minutes $MINUTES"
    fi
    LR=${3:-$(awk -v lr="$LR" 'BEGIN { print lr / 2 }')}
    WARMUP=$(( WARMUP < 50 ? WARMUP : 50 ))
    echo "again: runs moved to .gpu/runs-$n; new cycle: ${MINUTES:-0} minutes (0: $STEPS steps), peak lr $LR"
fi

if [ "$mode" = start ]; then  # again runs on the machine start built the coder on
    python3 setup.py -q build_ext --inplace >.gpu/build.log 2>&1 || { tail -20 .gpu/build.log; exit 1; }
fi
if [ "$mode" = start ] || [ "$mode" = again ]; then
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi (rehearsal)"
    mkdir -p .gpu/runs
    for arch in $ARCHS; do
        # setsid: the training outlives this call, until the machine goes back
        # shellcheck disable=SC2086
        setsid nohup python3 -m zoo.cli train --arch "$arch" --train .gpu/data/train --val .gpu/data/val \
            --out ".gpu/runs/$arch" --init ".gpu/init/$arch.pt" $budget --warmup "$WARMUP" \
            --batch-size "$BATCH" --patch "$PATCH" --lr "$LR" --scheduler cosine --val-every "$VAL_EVERY" \
            --ckpt-every "$CKPT_EVERY" --workers "$WORKERS" --threads "$THREADS" $AMP $WIDTHS $ema --quiet \
            --resume >>".gpu/train-$arch.log" 2>&1 </dev/null &
        echo "started $arch: pid $!"
    done
fi

# follow the runs until all have finished (summary.json), none is running, or the deadline
deadline=$(( $(date +%s) + $(awk "BEGIN { print int($minutes * 60) }") ))
while [ "$(date +%s)" -lt "$deadline" ]; do
    running=0 finished=0 total=0
    for arch in $ARCHS; do
        total=$((total + 1))
        if [ -f ".gpu/runs/$arch/summary.json" ]; then finished=$((finished + 1)); continue; fi
        if pgrep -f "zoo.cli train --arch $arch " >/dev/null; then running=$((running + 1)); fi
    done
    if [ "$finished" = "$total" ]; then break; fi
    if [ "$running" = 0 ]; then echo "no training is running"; break; fi
    tick=$((${tick:-0} + 1))
    if [ $((tick % 6)) = 0 ]; then  # once a minute: how busy the GPU is, and where each run stands
        echo "$(date +%T) GPU $(nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>/dev/null)" \
            "$(for arch in $ARCHS; do tail -n 1 ".gpu/runs/$arch/log.csv" 2>/dev/null | cut -d, -f1-3 | tr '\r\n' '  '; done)"
    fi
    sleep 10
done
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>/dev/null
status=0
for arch in $ARCHS; do
    echo "== $arch"
    tail -n 3 ".gpu/runs/$arch/log.csv" 2>/dev/null
    tail -n 3 ".gpu/train-$arch.log"
    python3 scripts/gpu_train.py collect ".gpu/runs/$arch" "$OUT/$arch" || status=1
done
exit $status
