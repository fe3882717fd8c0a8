#!/usr/bin/env bash
# Measure the new default-model candidate (issue #13) from its running training, end to end:
#
#   benchmarks/tools/default_v2_check.sh [RUN_DIR] [NAME]
#
# RUN_DIR  the `train finetune` run (default ~/hemaedge-runs/default-v2); its CURRENT best
#          checkpoint is snapshotted (the training keeps going) into ~/hemaedge-runs/NAME
#          ($HEMAEDGE_CHECK_SNAPSHOT); results go to benchmarks/results/NAME ($HEMAEDGE_CHECK_RESULTS)
# NAME     default default-v2-epoch<N> (N = epochs finished when the snapshot is taken)
#
# Steps: snapshot (val/test metrics, temperature on val, ECE, OOD + domain sections) ->
# int8 TFLite export with calibration and parity on BloodMNIST-128 val/test (the same settings
# as the packaged default: int8 weights/activations, MEAN/FULLY_CONNECTED/SOFTMAX in float) ->
# calibration of the int8 bundle -> PBC fields end to end -> BCCD val end to end -> the OOD rule's
# flag rates (ood_rule) -> the goals table
# (benchmarks/results/default_model_goals.md). Results of an intermediate checkpoint are
# labelled with its epoch. Never touches BCCD test and never replaces the packaged default.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUN=${1:-$HOME/hemaedge-runs/default-v2}
DATA=${HEMAEDGE_SHARED_DATA:-../shared/data}
PY=${PY:-.venv/bin/python}
EPOCH=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['epoch'])" "$RUN/state.json")
NAME=${2:-default-v2-epoch$EPOCH}
SNAP=${HEMAEDGE_CHECK_SNAPSHOT:-$HOME/hemaedge-runs/$NAME}
RES=${HEMAEDGE_CHECK_RESULTS:-benchmarks/results/$NAME}
mkdir -p "$RES"
nice -n 10 "$PY" -m hemaedge.cli train snapshot "$RUN" --out "$SNAP" --bootstrap 1000 \
    --publish "$RES/finetune_bloodmnist128"
# parity on a seeded subset of 500 images per split (the full-split int8 accuracy comes from the
# calibration step below, which scores every val and test image with the bundle);
# HEMAEDGE_CHECK_PARITY_SAMPLE=all checks parity on every val and test image (the final candidate)
SAMPLE=${HEMAEDGE_CHECK_PARITY_SAMPLE:-500}
SAMPLE_ARGS=(--sample "$SAMPLE")
[ "$SAMPLE" = all ] && SAMPLE_ARGS=()
source benchmarks/tools/default_int8_export.sh
nice -n 10 "$PY" -m hemaedge.cli export tflite "$SNAP/model.keras" "${DEFAULT_INT8_ARGS[@]}" \
    --data "$DATA/bloodmnist128" "${SAMPLE_ARGS[@]}" --out "$SNAP/bundle-int8"
cp "$SNAP/bundle-int8/manifest.json" "$RES/bundle-int8-manifest.json"
# the three bundle measurements are independent: run them side by side
nice -n 10 "$PY" -m hemaedge.benchmarks.tools.bundle_calibration --bundle "$SNAP/bundle-int8" \
    --data "$DATA/bloodmnist128" --name "${NAME//-/_}" --out "$RES" > "$SNAP/calibration.log" 2>&1 &
P1=$!
nice -n 10 "$PY" -m hemaedge.benchmarks.tools.pbc_end_to_end --data "$DATA/pbc_raw_val" \
    --bloodmnist-val "$DATA/bloodmnist128/val" --bundle "$SNAP/bundle-int8" --out "$RES" > "$SNAP/pbc.log" 2>&1 &
P2=$!
nice -n 10 "$PY" -m hemaedge.benchmarks.tools.bccd_wbc --data "$DATA/bccd" --bloodmnist128 "$DATA/bloodmnist128" \
    --bundle "$SNAP/bundle-int8" --split val --normalize bundle --name "${NAME//-/_}_val" --out "$RES" \
    > "$SNAP/bccd.log" 2>&1 &
P3=$!
wait $P1 && wait $P2 && wait $P3
# the unidentified rule with the bundle's OOD threshold: BloodMNIST val, BCCD val, PBC fields
nice -n 10 "$PY" -m hemaedge.benchmarks.tools.ood_rule --bundle "$SNAP/bundle-int8" --name "${NAME//-/_}" \
    --bccd "$DATA/bccd" --pbc "$DATA/pbc_raw_val" --bloodmnist128 "$DATA/bloodmnist128" --out "$RES" \
    > "$SNAP/ood_rule.log" 2>&1
FINAL=()
[[ "$NAME" == *-final ]] && FINAL=(--final)  # the candidate that was packaged as the default
"$PY" -m hemaedge.benchmarks.tools.default_model_goals --candidate "$RES" --label "$NAME" "${FINAL[@]}" \
    --out "${HEMAEDGE_GOALS_OUT:-benchmarks/results}"
