#!/bin/bash
# usage: [MINUTES=115 | MORE=110] [CLOCK=cpu] [INIT=runs/gpu-x/last.pt LR=5e-5] scripts/resume_vr.sh hp|msh   (resume one of the two long variable-rate runs with the current
# recipe, in the background; docs/training.md). Each session is one cosine cycle of MINUTES wall-clock minutes, so the
# weights released at the session's end were trained down to 1% of the peak learning rate.
cd "$(dirname "$0")/.."
r=$1
case "$r" in hp|msh) ;; *) echo "usage: scripts/resume_vr.sh hp|msh" >&2; exit 2 ;; esac
if [ $r = hp ]; then A=bmshj2018-hyperprior-vr; else A=mbt2018-mean-vr; fi
# without runs/$r-vr/last.pt (a fresh checkout) the run starts again from the newest release
# INIT: start instead from a checkpoint (a GPU run's, say; LR then the lower peak that suits weights already trained)
I=${INIT:-$(ls -d model_store/entries/$A/mse/v* | sort -V | tail -n 1)}
LR=${LR:-1e-4}
pkill -f "out runs/$r-vr " ; sleep 2
# a run that finished its cycle (summary.json) was released: resuming it would end at once (its clock is spent),
# so it moves aside and the new cycle starts from the newest release
if [ -f runs/$r-vr/summary.json ]; then
    mv runs/$r-vr "runs/$r-vr.done-$(date +%Y%m%d-%H%M)"
    echo "runs/$r-vr had finished its cycle: moved aside; starting from $I"
fi
# MORE: a cycle left unfinished by the last session (last.pt, no summary.json) goes on for MORE minutes from where it
# stopped (zoo train --more-minutes: its budget becomes the minutes it has trained plus MORE, so its cosine ends
# this session; without last.pt, a fresh MORE-minute cycle)
BUDGET="--max-minutes ${MINUTES:-115}"
if [ -n "$MORE" ]; then BUDGET="--more-minutes $MORE"; fi
# CLOCK=cpu: the minutes count this run's CPU time instead of the wall clock (zoo train --budget-clock cpu), so a
# cycle can be sized to the core-hours it must add, whatever else the machine does meanwhile (a CI check, a release)
if [ -n "$CLOCK" ]; then BUDGET="$BUDGET --budget-clock $CLOCK"; fi
# tcmalloc where it is installed (Debian: libtcmalloc-minimal4): glibc's malloc hands the large activation buffers
# back to the kernel and faults them in again every step; tcmalloc keeps them, about a third less CPU per step
# (docs/training.md, "The memory allocator")
TCMALLOC=$(python -m zoo.train.malloc)  # zoo.train.malloc.installed_tcmalloc: the one list of places
LD_PRELOAD=$TCMALLOC TORCHINDUCTOR_COMPILE_THREADS=1 setsid nohup nice -n 19 zoo train --arch $A --train runs/data-vr/train --val runs/data-vr/val --out runs/$r-vr $BUDGET --warmup 50 --batch-size 8 --patch 256 --lr $LR --scheduler cosine --val-every 500 --ckpt-every 50 --workers 1 --threads 1 --quiet --resume --amp bf16 --channels-last --ema 0.995 --compile --init $I >> runs/$r-vr.log 2>&1 &
