#!/usr/bin/env bash
# Train the multi-domain candidate of issue #13: the default's recipe from ImageNet on BloodMNIST-128
# plus BCCD's labelled train cells (15 % of every epoch), the best epoch chosen on BloodMNIST val and
# BCCD val together. BCCD test is never read here (run_all step multidomain-md1-test reports it once).
#
#   benchmarks/tools/multidomain_train.sh [RUN_ROOT [STAGE]] [extra train finetune options, e.g. --resume]
#
# STAGE md1 (default): 10 epochs from ImageNet; md2: 4 more epochs at lr 5e-5 from md1's best
# checkpoint (what took the packaged default from v5 to v6), a new seed.
#
# RUN_ROOT (default ~/hemaedge-runs/multidomain) gets cells/run-{train,val}: `edge run --save-crops all`
# of the single-label BCCD frames with the packaged default's segmentation and crops, "reviewed" from
# bccd/wbc_subtypes.csv (train/adapt_bccd.labelled_run); and md1/: the training run (checkpoint every
# epoch; continue an interrupted one with --resume). About 7-8 min an epoch on an idle 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=${1:-$HOME/hemaedge-runs/multidomain}
STAGE=${2:-md1}
shift $(( $# < 2 ? $# : 2 ))
case "$STAGE" in
  md1) STAGE_ARGS=(--weights imagenet --epochs 10 --seed 46) ;;
  md2) STAGE_ARGS=(--init "$ROOT/md1/best.keras" --epochs 4 --lr 5e-5 --seed 47) ;;
  *) echo "Error: STAGE must be md1 or md2, not $STAGE" >&2; exit 2 ;;
esac
DATA=${HEMAEDGE_SHARED_DATA:-../shared/data}
PY=${PY:-.venv/bin/python}
if [ ! -f "$ROOT/cells/run-val/cells.csv" ]; then
  "$PY" - "$DATA/bccd" "$ROOT/cells" <<'PYEOF'
import sys
from pathlib import Path
from hemaedge.train.adapt_bccd import labelled_run
bccd, work = Path(sys.argv[1]), Path(sys.argv[2])
work.mkdir(parents=True, exist_ok=True)
for split in ("train", "val"):
    run_dir, stats = labelled_run(bccd, split, work, "src/hemaedge/models/default")
    print(split, run_dir, stats, flush=True)
PYEOF
fi
exec nice -n 19 "$PY" -m hemaedge.cli train finetune --data "$DATA/bloodmnist128" --out "$ROOT/$STAGE" \
  --backbone efficientnet-lite0 "${STAGE_ARGS[@]}" --size 128 --augment robust --normalize lab-anchors \
  --one-lab-pass --weighted-sampling --no-weighted-loss \
  --extra-cells "$ROOT/cells/run-train" --extra-share 0.15 --extra-val "$ROOT/cells/run-val" "$@"
