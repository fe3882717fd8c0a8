#!/usr/bin/env bash
# Regenerate every table and plot in benchmarks/results/ on this machine, with one command:
#
#   benchmarks/run_all.sh EXPORT_DIR [KERAS_MODEL]
#
# EXPORT_DIR  the bundles to benchmark: what `hemaedge export all MODEL.keras --out EXPORT_DIR`
#             wrote (one bundle per format), or a single bundle; default: $HEMAEDGE_BENCH_EXPORT,
#             else the packaged default bundle.
# KERAS_MODEL the Keras fp32 source of those bundles: the baseline every latency is divided by
#             (default: $HEMAEDGE_BENCH_KERAS; without it the baseline rows say "skipped").
#
# Environment: HEMAEDGE_SHARED_DATA (default ../shared/data), HEMAEDGE_BENCH_OUT (benchmarks/results),
# HEMAEDGE_BENCH_NAME (bench_desktop), HEMAEDGE_BENCH_EXPORT_TABLE (the `export all` table JSON:
# formats that failed to export get rows too), HEMAEDGE_BENCH_ACCURACY (measure | manifest: reuse
# the export's full-test-split parity accuracy instead of scoring again),
# HEMAEDGE_BENCH_PRESET (desktop), HEMAEDGE_BENCH_LIMIT (test images; empty = the whole test
# split), HEMAEDGE_BENCH_TRAINING_RUNS (folders of training runs for the trade-off table,
# space-separated; default runs/ when it exists), HEMAEDGE_PBC_BUNDLE (bundle for the PBC
# end-to-end table; default: the int8 bundle of EXPORT_DIR, else EXPORT_DIR itself),
# HEMAEDGE_HYBRID_RUNS (the `train hybrid` runs the hybrid table collects; default runs/hybrid).
# Runs under `nice` so a shared machine stays usable; takes tens of minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
HE=${HEMAEDGE:-$( [ -x .venv/bin/hemaedge ] && echo .venv/bin/hemaedge || echo hemaedge )}
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
DATA=${HEMAEDGE_SHARED_DATA:-../shared/data}
EXPORT=${1:-${HEMAEDGE_BENCH_EXPORT:-}}
KERAS=${2:-${HEMAEDGE_BENCH_KERAS:-}}
NAME=${HEMAEDGE_BENCH_NAME:-bench_desktop}
PRESET=${HEMAEDGE_BENCH_PRESET:-desktop}
LIMIT=${HEMAEDGE_BENCH_LIMIT:-}
TRAINING=${HEMAEDGE_BENCH_TRAINING_RUNS:-$( [ -d runs ] && echo runs || true )}
OUT=${HEMAEDGE_BENCH_OUT:-benchmarks/results}
export TF_CPP_MIN_LOG_LEVEL=2

echo "== per-model / per-format / per-frame tables -> $OUT/$NAME.{md,csv,json,_pareto.png,_latency.png}"
args=(bench run)
[ -n "$EXPORT" ] && args+=("$EXPORT")
args+=(--preset "$PRESET" --data "$DATA/bloodmnist128" --frames "$DATA/bccd" --out "$OUT" --name "$NAME" --quiet)
[ -n "$KERAS" ] && args+=(--keras "$KERAS")
[ -n "${HEMAEDGE_BENCH_EXPORT_TABLE:-}" ] && args+=(--export-table "$HEMAEDGE_BENCH_EXPORT_TABLE")
[ -n "${HEMAEDGE_BENCH_ACCURACY:-}" ] && args+=(--accuracy "$HEMAEDGE_BENCH_ACCURACY")
[ -n "$LIMIT" ] && args+=(--limit "$LIMIT")
for t in $TRAINING; do args+=(--training-runs "$t"); done
nice -n 10 $HE "${args[@]}"

echo "== cell segmentation on BCCD frames -> $OUT/segmentation_bccd.{md,json}"
nice -n 10 $PY -m hemaedge.benchmarks.segmentation_bccd --data "$DATA/bccd" --out "$OUT"

PBC_BUNDLE=${HEMAEDGE_PBC_BUNDLE:-}
if [ -z "$PBC_BUNDLE" ] && [ -n "$EXPORT" ]; then
  if [ -f "$EXPORT/tflite-int8/manifest.json" ]; then PBC_BUNDLE=$EXPORT/tflite-int8
  elif [ -f "$EXPORT/manifest.json" ]; then PBC_BUNDLE=$EXPORT; fi
fi
echo "== end to end on PBC fields -> $OUT/pbc_end_to_end.{md,json}"
pbc=(--data "$DATA/pbc_raw_val" --bloodmnist-val "$DATA/bloodmnist128/val" --out "$OUT")
[ -n "$PBC_BUNDLE" ] && pbc+=(--bundle "$PBC_BUNDLE")
nice -n 10 $PY -m hemaedge.benchmarks.pbc_end_to_end "${pbc[@]}"

HYBRID_RUNS=${HEMAEDGE_HYBRID_RUNS:-runs/hybrid}
if [ -f benchmarks/hybrid_table.py ] && [ -d "$HYBRID_RUNS" ]; then
  # collects the `train hybrid` runs under HYBRID_RUNS; runs that are missing are trained (hours)
  echo "== hybrid paper table -> $OUT/hybrid_bloodmnist128.{md,json,png}"
  nice -n 10 $PY -m hemaedge.benchmarks.hybrid_table --data "$DATA/bloodmnist128" --runs "$HYBRID_RUNS" \
    --out "$OUT/hybrid_bloodmnist128"
fi
echo "== done: $(ls $OUT | wc -l) files in $OUT"
