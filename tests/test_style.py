"""House style: ``ruff check`` with the settings in pyproject.toml (nerfstudio's, see ``[tool.ruff]``)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKED = ["segsplat_ns", "method_configs", "tests", "benchmarks"]


def _ruff() -> list[str] | None:
    """The ruff command: the venv's own (next to this interpreter), else the one on PATH, else None."""
    local = Path(sys.executable).with_name("ruff")
    if local.is_file():
        return [str(local)]
    found = shutil.which("ruff")
    return [found] if found else None


def test_ruff_check():
    ruff = _ruff()
    if ruff is None:
        pytest.skip("ruff is not installed (it is in the `test` extra: pip install -e '.[test]')")
    proc = subprocess.run(
        [*ruff, "check", "--no-cache", "--output-format", "concise", *CHECKED],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"ruff check found problems:\n{proc.stdout}{proc.stderr}"
