#!/usr/bin/env bash
# HematoFusion's weighted ensemble with real members (issue #19), measured end to end:
#
#   benchmarks/tools/ensemble_check.sh NAME MEMBER1.keras MEMBER2.keras [MEMBER3.keras ...]
#
# MEMBER1 is the packaged default's Keras source; every member has its sidecar .json (written by
# `hemaedge train finetune` / `train snapshot`) and the same input contract. Work goes to
# ~/hemaedge-runs/NAME ($HEMAEDGE_ENSEMBLE_WORK), tables to benchmarks/results/NAME
# ($HEMAEDGE_ENSEMBLE_RESULTS). Each step is skipped when its output exists, so the script can be
# run again after a stop. A second data set (issue #19 item 3, e.g. the red-cell crops of `hemaedge data
# rbc-crops`): HEMAEDGE_ENSEMBLE_DATA=ImageFolder root, HEMAEDGE_ENSEMBLE_CALIB=its calibration images
# (`hemaedge data calibration`); the PBC and whole-frame steps then do not apply and are left out.
#
# 1. weights chosen on BloodMNIST-128 val: the simplex grid (step 0.1) over all members, and for each
#    pair (MEMBER1, other) the paper's grid and the simplex grid
# 2. int8 (the packaged default's settings) and fp16 TFLite bundles of every member and of the
#    all-member ensemble
# 3. every int8 bundle: BloodMNIST-128 val/test accuracy on the device runtime (bundle_calibration),
#    the PBC fields end to end (pbc_end_to_end) and the test-time views off/flips/dihedral (views_check)
# 4. size and latency of every bundle side by side (`hemaedge bench run`, desktop preset) with its
#    Pareto plot
# 5. the summary table (ensemble_table): members, ensembles, gain over the best member, cost
set -euo pipefail
cd "$(dirname "$0")/../.."
[ $# -ge 3 ] || { echo "Error: usage: $0 NAME MEMBER1.keras MEMBER2.keras [MEMBER3.keras ...]" >&2; exit 2; }
NAME=$1; shift
MEMBERS=("$@")
for m in "${MEMBERS[@]}"; do
  [ -f "$m" ] && [ -f "${m%.keras}.json" ] || { echo "Error: $m or its sidecar ${m%.keras}.json is missing" >&2; exit 2; }
done
DATA=${HEMAEDGE_SHARED_DATA:-../shared/data}
PY=${PY:-.venv/bin/python}
HE=("$PY" -m hemaedge.cli)
WORK=${HEMAEDGE_ENSEMBLE_WORK:-$HOME/hemaedge-runs/$NAME}
RES=${HEMAEDGE_ENSEMBLE_RESULTS:-benchmarks/results/$NAME}
NICE=(nice -n "${HEMAEDGE_ENSEMBLE_NICE:-10}")
SET=${HEMAEDGE_ENSEMBLE_DATA:-$DATA/bloodmnist128}
CALIB=${HEMAEDGE_ENSEMBLE_CALIB:-calibration_data}
source benchmarks/tools/default_int8_export.sh
WBC=0; [ -z "${HEMAEDGE_ENSEMBLE_DATA:-}" ] && WBC=1   # BloodMNIST: also PBC fields and whole BCCD frames
mkdir -p "$WORK/export" "$RES"
log() { echo "[$(date -u +%H:%M:%S)] $*"; }

ensemble() {  # OUT GRID MEMBER...
  local out=$1 grid=$2; shift 2
  [ -f "$out/ensemble.json" ] && { log "kept $out"; return; }
  log "ensemble $out ($grid grid)"
  "${NICE[@]}" "${HE[@]}" train ensemble "$@" --data "$SET" --out "$out" --grid "$grid" --step 0.1
}
ensemble "$WORK/all-simplex" simplex "${MEMBERS[@]}"
for i in $(seq 1 $(( ${#MEMBERS[@]} - 1 ))); do
  ensemble "$WORK/pair$i-paper" paper "${MEMBERS[0]}" "${MEMBERS[$i]}"
  ensemble "$WORK/pair$i-simplex" simplex "${MEMBERS[0]}" "${MEMBERS[$i]}"
done

export_bundle() {  # KERAS QUANT OUT
  local src=$1 quant=$2 out=$3
  [ -f "$out/manifest.json" ] && { log "kept $out"; return; }
  log "export $quant $out"
  local args=(--quant "$quant")
  [ "$quant" = int8 ] && args=("${DEFAULT_INT8_ARGS[@]}")   # exactly the packaged default's settings
  args+=(--data "$SET" --sample 500 --max-drop "${HEMAEDGE_ENSEMBLE_MAX_DROP:-1}" --out "$out")
  "${NICE[@]}" "${HE[@]}" export tflite "$src" "${args[@]}"
}
for i in "${!MEMBERS[@]}"; do
  for q in int8 fp16; do export_bundle "${MEMBERS[$i]}" "$q" "$WORK/export/member$i-$q"; done
done
for q in int8 fp16; do export_bundle "$WORK/all-simplex/ensemble.keras" "$q" "$WORK/export/ensemble-$q"; done

for b in "$WORK"/export/*-int8; do
  tag=$(basename "$b")
  mkdir -p "$RES/$tag"
  [ -f "$RES/$tag/calibration_$tag.json" ] || { log "int8 accuracy $tag";
    "${NICE[@]}" "$PY" -m hemaedge.benchmarks.tools.bundle_calibration --bundle "$b" --data "$SET" \
        --name "$tag" --out "$RES/$tag" > "$WORK/calibration-$tag.log" 2>&1; }
  if [ $WBC = 1 ] && [ ! -f "$RES/$tag/pbc_end_to_end.json" ]; then log "PBC end to end $tag"
    "${NICE[@]}" "$PY" -m hemaedge.benchmarks.tools.pbc_end_to_end --data "$DATA/pbc_raw_val" \
        --bloodmnist-val "$DATA/bloodmnist128/val" --bundle "$b" --out "$RES/$tag" > "$WORK/pbc-$tag.log" 2>&1
  fi
  # the packaged default runs test-time views (flips): compare members and ensemble the same way
  if [ $WBC = 1 ] && [ ! -f "$RES/$tag/views_check_$tag.json" ]; then log "test-time views $tag"
    "${NICE[@]}" "$PY" -m hemaedge.benchmarks.tools.views_check --bundle "$b" --bloodmnist128 "$SET" \
        --name "$tag" --out "$RES/$tag" > "$WORK/views-$tag.log" 2>&1
  fi
done

FRAMES=(); [ $WBC = 1 ] && FRAMES=(--frames "$DATA/bccd")
[ -f "$RES/ensemble_bench.json" ] || { log "bench";
  "${NICE[@]}" "${HE[@]}" bench run "$WORK/export" --preset desktop --data "$SET" "${FRAMES[@]}" \
      --out "$RES" --name ensemble_bench --quiet; }
log "table"
"$PY" -m hemaedge.benchmarks.tools.ensemble_table --work "$WORK" --results "$RES" --out "$RES/ensemble_$(basename "$SET")" \
    --data-name "${HEMAEDGE_ENSEMBLE_DATA_NAME:-BloodMNIST-128}"
