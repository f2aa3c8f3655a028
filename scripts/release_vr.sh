#!/bin/bash
# Release v$VER of both variable-rate runs in parallel, each into its own copy of the manifest, then merge.
# usage: VER=1.4 HPNOTE="..." MSHNOTE="..." scripts/release_vr.sh   (about 14 minutes on 2 cores); it also adds both
# releases to the learning curve (scripts/learning_point.py): then python benchmarks/rd_report.py
# HPLINEAGE / MSHLINEAGE (optional): core-hours behind each run's warm start, where its --init entry's card does
# not record a total (entries before v1.3, or a run warm-started from a checkpoint); by default zoo release reads it
# from that card. HPGPU / MSHGPU likewise for GPU minutes (a run warm-started from a lent GPU's checkpoint).
# HPRUN / MSHRUN (optional): the run folders (default runs/hp-vr, runs/msh-vr).
# ONLY=hp|msh (optional): release that one run now, straight into zoo/manifest.json (16 minutes on the one core the
# other run's training leaves), while the other still trains; its NOTE alone is needed. Run it again with the other
# once that one ends: the two releases write the manifest one after the other, never at once.
set -e
: "${VER:?set VER, e.g. VER=1.3}"
case "${ONLY:-both}" in
  both) : "${HPNOTE:?set HPNOTE (the model cards provenance line)}" "${MSHNOTE:?set MSHNOTE}" ;;
  hp) : "${HPNOTE:?set HPNOTE (the model cards provenance line)}" ;;
  msh) : "${MSHNOTE:?set MSHNOTE (the model cards provenance line)}" ;;
  *) echo "ONLY is hp or msh, not $ONLY" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
# the Kodak evaluation under tcmalloc where it is installed: a third less CPU (docs/training.md, "The memory allocator")
LD_PRELOAD=$(python -m zoo.train.malloc)  # zoo.train.malloc.installed_tcmalloc: the one list of places
export LD_PRELOAD
DS="shared/datasets/wallpapers (178, licences in its SOURCES.md) + photos 001-035 (036-039 held out)"
HPRUN=${HPRUN:-runs/hp-vr}; MSHRUN=${MSHRUN:-runs/msh-vr}
release_hp() {  # $1: the manifest it writes
  zoo release $HPRUN --checkpoint best.pt --version $VER --half --out model_store/entries/bmshj2018-hyperprior-vr/mse/v$VER \
    --eval ../shared/datasets/kodak --dataset-name "$DS" --manifest $1 --repo-root . --current-for auto \
    --note "$HPNOTE" ${HPLINEAGE:+--lineage-cpu-hours $HPLINEAGE} ${HPGPU:+--lineage-gpu-minutes $HPGPU} > runs/release-hp-vr-$VER.log 2>&1
}
release_msh() {
  zoo release $MSHRUN --checkpoint best.pt --version $VER --half --out model_store/entries/mbt2018-mean-vr/mse/v$VER \
    --eval ../shared/datasets/kodak --dataset-name "$DS" --manifest $1 --repo-root . --current-for auto \
    --note "$MSHNOTE" ${MSHLINEAGE:+--lineage-cpu-hours $MSHLINEAGE} ${MSHGPU:+--lineage-gpu-minutes $MSHGPU} > runs/release-msh-vr-$VER.log 2>&1
}
if [ "${ONLY:-both}" = hp ]; then
  release_hp zoo/manifest.json
  python scripts/learning_point.py model_store/entries/bmshj2018-hyperprior-vr/mse/v$VER
  exit 0
elif [ "${ONLY:-both}" = msh ]; then
  release_msh zoo/manifest.json
  python scripts/learning_point.py model_store/entries/mbt2018-mean-vr/mse/v$VER
  exit 0
fi
# both at once, each into its own copy of the manifest, merged below
cp zoo/manifest.json runs/manifest-hp.json; cp zoo/manifest.json runs/manifest-msh.json
release_hp runs/manifest-hp.json &
P1=$!
release_msh runs/manifest-msh.json &
P2=$!
wait $P1; wait $P2
python - <<'PY'
import json
hp = json.load(open("runs/manifest-hp.json"))
msh = json.load(open("runs/manifest-msh.json"))
pkg = json.load(open("zoo/manifest.json"))
def take(src, arch):
    return [e for e in src["entries"] if e["arch"] == arch]
out, done = [], set()
for e in pkg["entries"]:
    arch = e["arch"]
    if arch in ("bmshj2018-hyperprior-vr", "mbt2018-mean-vr"):
        if arch not in done:
            out += take(hp if arch.startswith("bmshj") else msh, arch)
            done.add(arch)
    else:
        out.append(e)
for name, src, arch in (("hp", hp, "bmshj2018-hyperprior-vr"), ("msh", msh, "mbt2018-mean-vr")):
    others = [e for e in src["entries"] if e["arch"] != arch]
    assert others == [e for e in pkg["entries"] if e["arch"] != arch], f"{name} release touched other entries"
pkg["entries"] = out
json.dump(pkg, open("zoo/manifest.json", "w"), indent=1)
open("zoo/manifest.json", "a").write("\n")
print("merged", len(out), "entries")
PY
python scripts/learning_point.py model_store/entries/bmshj2018-hyperprior-vr/mse/v$VER model_store/entries/mbt2018-mean-vr/mse/v$VER
