#!/usr/bin/env bash
# Every GPU question in one call, on a machine with a CUDA GPU (CI has none; the CPU suite never needs one):
#   1. the CUDA comparison tests: the CPU rasterizer against gsplat's kernels, the pixel query (what a click
#      renders) against gsplat's full render, the default device;
#   2. `segsplat bench-latency --device cuda`: every method's scoring and whole click at 10k/100k/1M Gaussians
#      with a 1920x1080 camera, timed on the GPU;
#   3. a short `ns-train saga` on the synthetic scene through gsplat's kernels, with a click, a .ply export and
#      the IoU against ground truth (`segsplat demo`).
# Installs nothing beyond the README's set-up (scripts/setup.sh). Writes every table and log to one folder:
#   bash scripts/gpu-check.sh [OUT]      (default: outputs/gpu-check)
# Each step's exit status is recorded in OUT/status.txt; the script goes on after a failure and exits non-zero
# at the end if any step failed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-outputs/gpu-check}
mkdir -p "$OUT"
bash scripts/setup.sh > "$OUT/setup.log" 2>&1 || { echo "set-up failed: see $OUT/setup.log"; exit 1; }
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
PY=.venv/bin/python
: > "$OUT/status.txt"

step() {  # step NAME COMMAND...: run, keep its output in OUT/NAME.log, record its exit status
  local name=$1; shift
  local start=$SECONDS
  echo "==> $name"
  "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc seconds=$((SECONDS - start))" | tee -a "$OUT/status.txt"
  return 0
}

"$PY" - > "$OUT/device.txt" 2>&1 <<'EOF'
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print(torch.cuda.get_device_name(0))
EOF
cat "$OUT/device.txt"
if ! grep -q "available True" "$OUT/device.txt"; then
  echo "no CUDA device is visible: this script is for a GPU machine" | tee -a "$OUT/status.txt"
  exit 1
fi

step cuda-tests "$PY" -m pytest -ra -p no:cacheprovider \
  "tests/test_rendering.py::test_cpu_path_matches_gsplat_cuda" \
  "tests/test_pixel_query.py::test_equals_gsplat_on_cuda" \
  "tests/test_cli_and_compat.py::test_default_device_type_follows_cuda_availability"
step bench-latency-cuda .venv/bin/segsplat bench-latency --device cuda --repeats 31 \
  --output-json "$OUT/bench-latency-cuda.json"
step demo-saga-cuda .venv/bin/segsplat demo --method saga --workdir "$OUT/demo"

echo "tables and logs: $OUT"
! grep -qv "rc=0" "$OUT/status.txt"
