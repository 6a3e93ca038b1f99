"""Shared fixtures: one tiny synthetic scene, and one real `ns-train <method>` run on it per registered method,
each made once per session (on first use)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict

import pytest

from segsplat_ns.registry import get_method, method_names
from segsplat_ns.runs import small_scene_training_args
from segsplat_ns.synthetic import SceneConfig, make_scene

BIN = Path(sys.executable).parent
RGB_STEPS, FEATURE_STEPS = 300, 150
METHODS = method_names()
"""Every registered segsplat method (the nerfstudio.method_configs entry points)."""


def run(args, cwd, env_extra=None, timeout=900):
    env = dict(os.environ, PYTHONUNBUFFERED="1", SEGSPLAT_NO_DOWNLOAD="1")
    env.update(env_extra or {})
    return subprocess.run(args, check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def train_args(method: str, scene: Path, name: str, rgb_steps: int = RGB_STEPS, feature_steps: int = FEATURE_STEPS):
    """ns-train flags of a tiny CPU run: the shared small-scene schedule plus the method's own tiny-run flags; the
    scene's language features (the synthetic stand-in for CLIP) are the run's language source."""
    return [
        str(BIN / "ns-train"), method, "--data", str(scene), "--output-dir", "runs", "--experiment-name", name,
        "--timestamp", "t", "--vis", "tensorboard", "--viewer.quit-on-train-completion", "True",
        "--pipeline.datamanager.language.source", "folder",
        *small_scene_training_args(rgb_steps, feature_steps),
        *get_method(method).cpu_training_args(tiny=True),
    ]  # fmt: skip


def checkpoint_of(config: Path) -> Path:
    return sorted((config.parent / "nerfstudio_models").glob("step-*.ckpt"))[-1]


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="session")
def scene(workdir) -> Path:
    config = SceneConfig(output=workdir / "scene", seed=3, num_objects=2, width=48, height=48,
                         num_train_views=12, num_eval_views=4)
    return make_scene(config)


@pytest.fixture(scope="session")
def train_run(workdir, scene) -> Callable[[str], Path]:
    """``train_run(method)``: config.yml of a finished tiny `ns-train <method>` run (both stages, CPU), trained
    once per session."""
    runs: Dict[str, Path] = {}

    def train(method: str) -> Path:
        if method not in runs:
            name = f"tiny-{method}"
            result = run(train_args(method, scene, name), cwd=workdir)
            assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
            config = workdir / "runs" / name / method / "t" / "config.yml"
            assert config.exists()
            runs[method] = config
        return runs[method]

    return train


@pytest.fixture(scope="session")
def trained(train_run) -> Path:
    """The tiny SAGA run (the SAGA-specific end-to-end tests)."""
    return train_run("saga")


@pytest.fixture(scope="session")
def trained_binary(train_run) -> Path:
    """The tiny Binary-Gaussian run (its method tests)."""
    return train_run("binary-gaussian")


@pytest.fixture(scope="session")
def trained_pipeline(trained):
    """The tiny SAGA run loaded in this process, as ns-eval loads it."""
    from segsplat_ns.runs import load_run

    _, pipeline, _, _ = load_run(trained, test_mode="test")
    return pipeline
