#!/usr/bin/env bash
# Set-up on a fresh machine: a virtual environment in .venv with the pinned dependencies (pyproject.toml).
# Idempotent: re-running it does nothing unless pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi

# open3d, which nerfstudio's exporter imports, needs the system's libusb.
if ! ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0'; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "==> installing libusb-1.0-0 (needed by open3d)"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libusb-1.0-0 >/dev/null
  else
    echo "warning: libusb-1.0 is missing; install it (Debian/Ubuntu: sudo apt-get install libusb-1.0-0) for ns-export" >&2
  fi
fi

# The viewer's browser test drives Debian's Chromium (it skips, saying so, where there is none).
if [ "${SEGSPLAT_SKIP_BROWSER:-0}" != 1 ] && ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "==> installing chromium and chromium-driver (for the viewer's browser test)"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null \
      || echo "warning: could not install chromium; the browser test will be skipped" >&2
  fi
fi

stamp=.venv/.segsplat-installed
want=$(sha256sum pyproject.toml | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "==> installing segsplat_ns and its pinned dependencies into .venv (first time: a few minutes, ~6 GB)"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet --progress-bar off -e ".[test]"
  echo "$want" > "$stamp"
fi
echo "==> ready: $(.venv/bin/python -c 'import torch, nerfstudio, segsplat_ns; print("torch", torch.__version__, "| segsplat_ns", segsplat_ns.__version__)')"
