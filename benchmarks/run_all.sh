#!/usr/bin/env bash
# Kept for old instructions: the result-making run is Python now (benchmarks/tools/run_all.py,
# one Step per result). Same arguments: [--list] [--only STEP,..] [--skip STEP,..] [EXPORT_DIR [KERAS_MODEL]].
cd "$(dirname "$0")/.." && exec "${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}" \
  -m hemaedge.benchmarks.tools.run_all "$@"
