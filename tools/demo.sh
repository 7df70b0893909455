#!/usr/bin/env bash
# The demo, on embedded data only (nothing is downloaded), a few minutes on 2 CPU cores:
#   1. pretrain a tiny MAE on random crops of scikit-image's photos  (tools/pretrain.py)
# Outputs under output/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
$PY tools/pretrain.py "$@"
