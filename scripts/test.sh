#!/usr/bin/env bash
# README command 2: install what is needed, then run the whole test suite (CPU only, no network needed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
exec .venv/bin/python -m pytest -ra "$@"
