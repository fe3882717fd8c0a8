#!/usr/bin/env bash
# Regenerate every table and plot in benchmarks/results/ on this machine, with one command:
#
#   benchmarks/run_all.sh [--list] [--only STEP[,STEP]] [--skip STEP[,STEP]] [EXPORT_DIR [KERAS_MODEL]]
#
# EXPORT_DIR  the export folder: one bundle per format, as `hemaedge export all MODEL.keras --out
#             EXPORT_DIR` writes it (made by the export step when it holds no finished export), or a
#             single bundle (bench only); default: $HEMAEDGE_BENCH_EXPORT, else the packaged default
#             bundle. Its export table is OUT/export_<basename of EXPORT_DIR>.{md,json}.
# KERAS_MODEL the Keras fp32 source of those bundles: what the export step exports and the baseline
#             every latency is divided by (default: $HEMAEDGE_BENCH_KERAS; without it the export
#             step is skipped and the baseline rows say "skipped").
# --list      print each step, its commands and its output files; do nothing.
# --only/--skip  run only / all but these steps (names as in --list). Default: every step, cheapest first.
#
# Steps (details with --list): finetune, hybrid (collect finished training runs, never retrain),
# export, bench, segmentation, pbc, edge, svm, rbcdetect, rbcmodel, rbcspeed (red cells, docs/redcells.md). A step whose inputs are missing says
# "skipped: <reason>" and leaves the committed files alone; a failing step is reported as FAILED,
# the other steps still run, and the script exits non-zero. Summary at the end.
#
# Environment: HEMAEDGE_SHARED_DATA (default ../shared/data), HEMAEDGE_BENCH_OUT (benchmarks/results),
# HEMAEDGE_BENCH_NAME (bench_desktop), HEMAEDGE_BENCH_EXPORT_TABLE (the `export all` table JSON:
# formats that failed to export get rows too; default OUT/export_<EXPORT_DIR name>.json when it
# exists), HEMAEDGE_BENCH_ACCURACY (measure | manifest: reuse the export's full-test-split parity
# accuracy instead of scoring again), HEMAEDGE_BENCH_PRESET (desktop), HEMAEDGE_BENCH_LIMIT (quick
# check only: at most N test images / frames / fields in bench, segmentation, pbc and edge; empty =
# everything), HEMAEDGE_BENCH_TRAINING_RUNS (folders of training runs for the trade-off table,
# space-separated; default runs/ when it exists), HEMAEDGE_PBC_BUNDLE (bundle for the PBC end-to-end
# table; default the packaged default bundle src/hemaedge/models/default),
# HEMAEDGE_HYBRID_RUNS (the `train hybrid` runs the hybrid table collects; default runs/hybrid),
# HEMAEDGE_HYBRID_TRAIN (1: train the missing hybrid runs first - hours, so also set
# HEMAEDGE_STEP_TIMEOUT=0; default 0: collect only),
# HEMAEDGE_FINETUNE_RUN (the finished `train finetune` run folder; default runs/finetune-lite0),
# HEMAEDGE_EXPORT_FORMATS (formats for `export all`; default its own list), HEMAEDGE_EXPORT_FORCE
# (1: export again even when EXPORT_DIR holds an export),
# HEMAEDGE_RBC_BUNDLE (red-cell morphology bundle; default src/hemaedge/models/rbc), HEMAEDGE_RBC_RUNS
# (the `train finetune` runs on the red-cell crops that the morphology table lists; default runs/rbc/*),
# HEMAEDGE_STEP_TIMEOUT (seconds any one command may run, default 10800; 0 = no limit).
# Runs under `nice`; about an hour on 2 CPU cores with an export to make, ~15 min without.
set -euo pipefail
cd "$(dirname "$0")/.."

STEPS=(finetune hybrid export bench segmentation pbc edge svm rbcdetect rbcmodel rbcspeed)
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

LIST=0; ONLY=""; SKIP=""; POS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --list) LIST=1 ;;
    --only) ONLY=${2:-}; [ -n "$ONLY" ] || { echo "run_all.sh: --only needs STEP[,STEP]" >&2; exit 2; }; shift ;;
    --only=*) ONLY=${1#*=} ;;
    --skip) SKIP=${2:-}; [ -n "$SKIP" ] || { echo "run_all.sh: --skip needs STEP[,STEP]" >&2; exit 2; }; shift ;;
    --skip=*) SKIP=${1#*=} ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "run_all.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    *) POS+=("$1") ;;
  esac
  shift
done
[ ${#POS[@]} -le 2 ] || { echo "run_all.sh: at most EXPORT_DIR and KERAS_MODEL, got: ${POS[*]}" >&2; exit 2; }
for s in ${ONLY//,/ } ${SKIP//,/ }; do
  [[ " ${STEPS[*]} " == *" $s "* ]] || { echo "run_all.sh: unknown step '$s'; steps: ${STEPS[*]}" >&2; exit 2; }
done

HE=${HEMAEDGE:-$( [ -x .venv/bin/hemaedge ] && echo .venv/bin/hemaedge || echo hemaedge )}
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
DATA=${HEMAEDGE_SHARED_DATA:-../shared/data}
EXPORT=${POS[0]:-${HEMAEDGE_BENCH_EXPORT:-}}
EXPORT=${EXPORT%/}
KERAS=${POS[1]:-${HEMAEDGE_BENCH_KERAS:-}}
NAME=${HEMAEDGE_BENCH_NAME:-bench_desktop}
PRESET=${HEMAEDGE_BENCH_PRESET:-desktop}
LIMIT=${HEMAEDGE_BENCH_LIMIT:-}
TRAINING=${HEMAEDGE_BENCH_TRAINING_RUNS:-$( [ -d runs ] && echo runs || true )}
OUT=${HEMAEDGE_BENCH_OUT:-benchmarks/results}
OUT=${OUT%/}
FINETUNE_RUN=${HEMAEDGE_FINETUNE_RUN:-runs/finetune-lite0}
HYBRID_RUNS=${HEMAEDGE_HYBRID_RUNS:-runs/hybrid}
HYBRID_TRAIN=${HEMAEDGE_HYBRID_TRAIN:-0}
DEFAULT_BUNDLE=src/hemaedge/models/default
PBC_BUNDLE=${HEMAEDGE_PBC_BUNDLE:-$DEFAULT_BUNDLE}
STEP_TIMEOUT=${HEMAEDGE_STEP_TIMEOUT:-10800}
EDGE_FRAMES=${LIMIT:-200}
RBC_BUNDLE=${HEMAEDGE_RBC_BUNDLE:-src/hemaedge/models/rbc}
RBC_RUNS=${HEMAEDGE_RBC_RUNS:-$(compgen -G "runs/rbc/*/metrics.json" > /dev/null && dirname runs/rbc/*/metrics.json | tr '\n' ' ' || true)}
export TF_CPP_MIN_LOG_LEVEL=2

# The export table is named after the export folder, as `export all` names it after the model
# (runs/export-demo/finetune-lite0-epoch4 <- finetune-lite0-epoch4.keras); a single bundle has none.
EXPORT_TABLE=""
if [ -n "$EXPORT" ] && [ ! -f "$EXPORT/manifest.json" ]; then EXPORT_TABLE=$OUT/export_$(basename "$EXPORT"); fi
# Edge-run labels: the packaged default bundle by its format (tflite-int8-mixed -> default_int8_mixed).
DEFAULT_FORMAT=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["model"]["format"])' \
  "$DEFAULT_BUNDLE/manifest.json" 2>/dev/null || echo unknown)
DEFAULT_LABEL=default_$(echo "${DEFAULT_FORMAT#tflite-}" | tr -- '-' '_')
FP32_LABEL=lite0_fp32        # the tflite-fp32 bundle of EXPORT_DIR (the project's Lite0 model)
EDGE_LABELS=("$DEFAULT_LABEL" "$FP32_LABEL")

# --- one plan per step: DESC, COST (2-core CPU), CMD (what runs), OUTS (files it writes) ----------
plan_finetune() {
  DESC="fine-tuning table, collected from the finished run $FINETUNE_RUN (never retrains)"
  COST="seconds"
  CMD=("$PY" -m hemaedge.benchmarks.finetune_table "$FINETUNE_RUN" --out "$OUT/finetune_bloodmnist128")
  OUTS=("$OUT"/finetune_bloodmnist128{.md,.json,_curves.png,_confusion.png})
}
plan_hybrid() {
  DESC="hybrid paper table, collected from the finished runs under $HYBRID_RUNS (lists the missing ones)"
  COST="seconds (HEMAEDGE_HYBRID_TRAIN=1: hours per missing run)"
  CMD=("$PY" -m hemaedge.benchmarks.hybrid_table --data "$DATA/bloodmnist128"
       --backbones efficientnet-lite0,efficientnet-lite1,efficientnet-lite2,efficientnetv2b0,resnet50 --preprocess rgb,masked-rgb,otsu-mask
       --augment paper,none --size 128,224 --runs "$HYBRID_RUNS" --out "$OUT/hybrid_bloodmnist128")
  [ "$HYBRID_TRAIN" = 1 ] || CMD+=(--collect-only)
  OUTS=("$OUT"/hybrid_bloodmnist128{.md,.json,.png})
}
plan_export() {
  DESC="export table of KERAS_MODEL, made by \`export all\` into EXPORT_DIR unless it holds a finished export"
  COST="0 when reused; ~20-30 min for every format with parity on val+test"
  CMD=("$HE" export all "${KERAS:-KERAS_MODEL}" --data "$DATA/bloodmnist128" --out "${EXPORT:-EXPORT_DIR}"
       --table "${EXPORT_TABLE:-$OUT/export_NAME}" --force)
  [ -n "${HEMAEDGE_EXPORT_FORMATS:-}" ] && CMD+=(--formats "$HEMAEDGE_EXPORT_FORMATS")
  OUTS=()
  [ -n "$EXPORT_TABLE" ] && OUTS=("$EXPORT_TABLE.md" "$EXPORT_TABLE.json")
  return 0
}
plan_bench() {
  DESC="per-model / per-format / per-frame tables (+ training trade-off table)"
  COST="~5 min with HEMAEDGE_BENCH_ACCURACY=manifest; ~20 min scoring every format on the test split"
  local table=${HEMAEDGE_BENCH_EXPORT_TABLE:-}
  if [ -z "$table" ] && [ -n "$EXPORT_TABLE" ] && [ -f "$EXPORT_TABLE.json" ]; then table=$EXPORT_TABLE.json; fi
  CMD=("$HE" bench run)
  [ -n "$EXPORT" ] && CMD+=("$EXPORT")
  CMD+=(--preset "$PRESET" --data "$DATA/bloodmnist128" --frames "$DATA/bccd" --out "$OUT" --name "$NAME" --quiet)
  [ -n "$KERAS" ] && CMD+=(--keras "$KERAS")
  [ -n "$table" ] && CMD+=(--export-table "$table")
  [ -n "${HEMAEDGE_BENCH_ACCURACY:-}" ] && CMD+=(--accuracy "$HEMAEDGE_BENCH_ACCURACY")
  [ -n "$LIMIT" ] && CMD+=(--limit "$LIMIT")
  for t in $TRAINING; do CMD+=(--training-runs "$t"); done
  OUTS=("$OUT/$NAME".{md,csv,json} "$OUT/${NAME}"_{pareto,latency}.png)
}
plan_segmentation() {
  DESC="white-cell and platelet recall/precision of the segmenter on BCCD frames"
  COST="~1-2 min"
  CMD=("$PY" -m hemaedge.benchmarks.segmentation_bccd --data "$DATA/bccd" --method stain --method otsu
       --split train --split test --split all --out "$OUT")
  [ -n "$LIMIT" ] && CMD+=(--limit "$LIMIT")
  OUTS=("$OUT"/segmentation_bccd.{md,json})
}
plan_pbc() {
  DESC="end to end (segment -> crop -> classify) on PBC fields, with bundle $PBC_BUNDLE"
  COST="~5 min"
  CMD=("$PY" -m hemaedge.benchmarks.pbc_end_to_end --data "$DATA/pbc_raw_val"
       --bloodmnist-val "$DATA/bloodmnist128/val" --bundle "$PBC_BUNDLE" --out "$OUT")
  [ -n "$LIMIT" ] && CMD+=(--limit "$LIMIT")
  OUTS=("$OUT"/pbc_end_to_end.{md,json})
}
plan_edge() {
  DESC="whole \`edge run\` on $EDGE_FRAMES BCCD frames, 3 runs per bundle: $DEFAULT_BUNDLE ($DEFAULT_LABEL),"
  DESC+=" EXPORT_DIR/tflite-fp32 ($FP32_LABEL, when it exists)"
  COST="~2 min"
  # LABEL/BUNDLE/N are filled in per run; the summary.json of each run is kept
  CMD=("$HE" edge run -q --bundle BUNDLE --source "$DATA/bccd/JPEGImages" --max-frames "$EDGE_FRAMES"
       --threads 2 --out TMP/LABEL_runN)
  OUTS=()
  local label i
  for label in "${EDGE_LABELS[@]}"; do
    for i in 1 2 3; do OUTS+=("$OUT/edge_run_bccd/${label}_run$i.summary.json"); done
  done
}
plan_svm() {
  DESC="fast SVM grid vs plain scikit-learn GridSearchCV on 1,600 real Lite0 features, timed"
  COST="~3 min"
  CMD=("$PY" -m hemaedge.benchmarks.hybrid_svm_check --data "$DATA/bloodmnist128" --per-class 200
       --out "$OUT/hybrid_svm_check.json")
  OUTS=("$OUT/hybrid_svm_check.json")
}

plan_rbcdetect() {
  DESC="red-cell detection: Chula RBC-12 point recall / touching cells split, BCCD RBC boxes (test splits)"
  COST="~2 min"
  CMD=("$PY" -m hemaedge.benchmarks.rbc_detection --chula "$DATA/chula_rbc12" --bccd "$DATA/bccd" --split test
       --bccd-split test --quiet --out "$OUT/rbc_detection")
  OUTS=("$OUT"/rbc_detection.{md,json})
}
plan_rbcmodel() {
  DESC="red-cell morphology: training runs ($RBC_RUNS) and the bundle $RBC_BUNDLE on the Chula test frames"
  COST="~3 min (crops are remade, ~10 s)"
  CMD=("$PY" -m hemaedge.benchmarks.rbc_morphology --chula "$DATA/chula_rbc12" --crops TMP/rbc64
       --bundle "$RBC_BUNDLE" --out "$OUT/rbc_morphology")
  for r in $RBC_RUNS; do CMD+=(--runs "$r"); done
  OUTS=("$OUT"/rbc_morphology.{md,json})
}
plan_rbcspeed() {
  DESC="red-cell analysis per frame with $RBC_BUNDLE, and what it adds to the white-cell pipeline"
  COST="~2 min"
  CMD=("$PY" -m hemaedge.benchmarks.rbc_speed --rbc "$RBC_BUNDLE" --chula "$DATA/chula_rbc12" --bccd "$DATA/bccd"
       --frames 40 --threads 2 --out "$OUT/rbc_speed")
  OUTS=("$OUT"/rbc_speed.{md,json})
}

# --- running ---------------------------------------------------------------------------------------
NOTE=$(mktemp); trap 'rm -f "$NOTE"' EXIT
skip() { echo "   skipped: $*"; echo "skipped: $*" >> "$NOTE"; exit 0; }   # leaves the committed files alone
note() { echo "   note: $*"; echo "$*" >> "$NOTE"; }
bounded() {  # one command, niced, killed (SIGINT first: the bench keeps finished rows) after STEP_TIMEOUT
  echo "   \$ $*"
  if [ "$STEP_TIMEOUT" = 0 ]; then nice -n 10 "$@"
  else nice -n 10 timeout --foreground -s INT -k 120 "$STEP_TIMEOUT" "$@"; fi
}

run_finetune() {
  plan_finetune
  [ -f "$FINETUNE_RUN/metrics.json" ] || skip "no run at $FINETUNE_RUN (no metrics.json); kept $OUT/finetune_bloodmnist128.*"
  bounded "${CMD[@]}"
}
run_hybrid() {
  plan_hybrid
  if [ "$HYBRID_TRAIN" != 1 ] && ! compgen -G "$HYBRID_RUNS/*/metrics.json" > /dev/null; then
    skip "no finished hybrid run under $HYBRID_RUNS; kept $OUT/hybrid_bloodmnist128.*"
  fi
  bounded "${CMD[@]}"
}
run_export() {
  plan_export
  [ -n "$EXPORT" ] || skip "no EXPORT_DIR given"
  [ -n "$EXPORT_TABLE" ] || skip "EXPORT_DIR $EXPORT is a single bundle, not an export folder"
  if compgen -G "$EXPORT/*/manifest.json" > /dev/null && [ "${HEMAEDGE_EXPORT_FORCE:-0}" != 1 ]; then
    [ -f "$EXPORT_TABLE.json" ] || skip "$EXPORT holds an export but its table $EXPORT_TABLE.json is not here (HEMAEDGE_EXPORT_FORCE=1 exports again)"
    note "reused the finished export in $EXPORT and its table $EXPORT_TABLE.{md,json}"
    return 0
  fi
  [ -n "$KERAS" ] || skip "no KERAS_MODEL to export into $EXPORT"
  [ -f "$KERAS" ] || { echo "   error: KERAS_MODEL $KERAS not found" >&2; return 2; }
  bounded "${CMD[@]}"
}
run_bench() { plan_bench; bounded "${CMD[@]}"; }
run_segmentation() { plan_segmentation; bounded "${CMD[@]}"; }
run_pbc() { plan_pbc; bounded "${CMD[@]}"; }
edge_runs() {  # LABEL BUNDLE: 3 runs, each summary.json kept as OUT/edge_run_bccd/LABEL_runN.summary.json
  local label=$1 bundle=$2 tmp i
  tmp=$(mktemp -d)
  for i in 1 2 3; do
    bounded "$HE" edge run -q --bundle "$bundle" --source "$DATA/bccd/JPEGImages" --max-frames "$EDGE_FRAMES" \
      --threads 2 --out "$tmp/${label}_run$i"
    cp "$tmp/${label}_run$i/summary.json" "$OUT/edge_run_bccd/${label}_run$i.summary.json"
  done
  rm -rf "$tmp"
}
run_edge() {
  plan_edge
  mkdir -p "$OUT/edge_run_bccd"
  edge_runs "$DEFAULT_LABEL" "$DEFAULT_BUNDLE"
  if [ -n "$EXPORT" ] && [ -f "$EXPORT/tflite-fp32/manifest.json" ]; then edge_runs "$FP32_LABEL" "$EXPORT/tflite-fp32"
  else note "$FP32_LABEL runs skipped: no ${EXPORT:-EXPORT_DIR}/tflite-fp32 bundle; kept $OUT/edge_run_bccd/${FP32_LABEL}_run*"; fi
}
run_svm() { plan_svm; bounded "${CMD[@]}"; }
run_rbcdetect() {
  plan_rbcdetect
  [ -d "$DATA/chula_rbc12" ] || skip "no $DATA/chula_rbc12; kept $OUT/rbc_detection.*"
  bounded "${CMD[@]}"
}
run_rbcmodel() {
  plan_rbcmodel
  [ -d "$DATA/chula_rbc12" ] || skip "no $DATA/chula_rbc12; kept $OUT/rbc_morphology.*"
  [ -f "$RBC_BUNDLE/manifest.json" ] || skip "no red-cell bundle at $RBC_BUNDLE; kept $OUT/rbc_morphology.*"
  [ -n "$RBC_RUNS" ] || skip "no finished red-cell training runs (HEMAEDGE_RBC_RUNS); kept $OUT/rbc_morphology.*"
  local tmp
  tmp=$(mktemp -d)
  bounded "$HE" data rbc-crops "$DATA/chula_rbc12" --out "$tmp/rbc64" --exclude uncategorised > /dev/null
  bounded "${CMD[@]/TMP\/rbc64/$tmp/rbc64}"
  rm -rf "$tmp"
}
run_rbcspeed() {
  plan_rbcspeed
  [ -d "$DATA/chula_rbc12" ] || skip "no $DATA/chula_rbc12; kept $OUT/rbc_speed.*"
  [ -f "$RBC_BUNDLE/manifest.json" ] || skip "no red-cell bundle at $RBC_BUNDLE; kept $OUT/rbc_speed.*"
  bounded "${CMD[@]}"
}

selected() {
  { [ -z "$ONLY" ] || [[ ",$ONLY," == *",$1,"* ]]; } && [[ ",$SKIP," != *",$1,"* ]]
}

if [ "$LIST" = 1 ]; then
  for s in "${STEPS[@]}"; do
    "plan_$s"
    echo "$s$(selected "$s" || echo ' (not selected)'): $DESC"
    echo "  cost: $COST"
    echo "  command: ${CMD[*]}"
    echo "  outputs: ${OUTS[*]:-}"
    [ ${#OUTS[@]} -gt 0 ] || echo "  note: writes OUT/export_<EXPORT_DIR name>.{md,json} when given an EXPORT_DIR"
  done
  exit 0
fi

mkdir -p "$OUT"
SUMMARY=(); FAILED=0
for s in "${STEPS[@]}"; do
  selected "$s" || continue
  "plan_$s"
  echo "== $s: $DESC -> ${OUTS[*]:-nothing}"
  : > "$NOTE"
  start=$SECONDS
  set +e
  ( set -e; "run_$s" )
  rc=$?
  set -e
  took="$((SECONDS - start)) s"
  if [ "$rc" = 0 ] && grep -q '^skipped: ' "$NOTE"; then status=$(grep -m1 '^skipped: ' "$NOTE")
  elif [ "$rc" = 0 ]; then status="ok ($took)$(sed 's/^/; /' "$NOTE" | tr -d '\n')"
  elif [ "$rc" = 124 ]; then status="FAILED: a command ran past HEMAEDGE_STEP_TIMEOUT=$STEP_TIMEOUT s"; FAILED=1
  else status="FAILED (exit $rc after $took)"; FAILED=1; fi
  [ "${status:0:6}" = FAILED ] && echo "   $status" >&2
  SUMMARY+=("$(printf '%-13s %s' "$s" "$status")")
done
echo "== summary ($OUT)"
printf '  %s\n' "${SUMMARY[@]}"
exit "$FAILED"
