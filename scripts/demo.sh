#!/usr/bin/env bash
# README command 1: install, make the synthetic scene, train SAGA on it, segment an object from a click,
# export it as .ply, and print the IoU against ground truth. CPU is enough (about 10 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PYTHONUNBUFFERED=1
exec .venv/bin/segsplat demo --method saga "$@"
