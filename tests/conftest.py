"""Shared fixtures: one tiny synthetic scene and one real `ns-train saga` run on it, made once per session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from segsplat_ns.commands.demo import small_scene_training_args
from segsplat_ns.synthetic import SceneConfig, make_scene

BIN = Path(sys.executable).parent
RGB_STEPS, FEATURE_STEPS = 300, 150


def run(args, cwd, env_extra=None, timeout=900):
    env = dict(os.environ, PYTHONUNBUFFERED="1", SEGSPLAT_NO_DOWNLOAD="1")
    env.update(env_extra or {})
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def train_args(scene: Path, name: str, rgb_steps: int = RGB_STEPS, feature_steps: int = FEATURE_STEPS, method: str = "saga"):
    sampling = ["--pipeline.model.num-sampled-pixels", "256"] if method == "saga" else []
    return [
        str(BIN / "ns-train"), method, "--data", str(scene), "--output-dir", "runs", "--experiment-name", name,
        "--timestamp", "t", "--vis", "tensorboard", "--viewer.quit-on-train-completion", "True",
        *small_scene_training_args(rgb_steps, feature_steps),
        *sampling,
    ]


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
def trained(workdir, scene) -> Path:
    """config.yml of a finished tiny `ns-train saga` run (both stages, CPU)."""
    result = run(train_args(scene, "tiny"), cwd=workdir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    config = workdir / "runs" / "tiny" / "saga" / "t" / "config.yml"
    assert config.exists()
    return config


@pytest.fixture(scope="session")
def trained_binary(workdir, scene) -> Path:
    """config.yml of a finished tiny `ns-train binary-gaussian` run (both stages, CPU)."""
    args = train_args(scene, "binary", method="binary-gaussian") + [
        "--pipeline.model.num-random-pixels", "128", "--pipeline.model.num-mask-pixels", "384",
    ]
    result = run(args, cwd=workdir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    config = workdir / "runs" / "binary" / "binary-gaussian" / "t" / "config.yml"
    assert config.exists()
    return config


@pytest.fixture(scope="session")
def trained_pipeline(trained):
    """The tiny run loaded in this process, as ns-eval loads it."""
    from segsplat_ns.commands.segment import load_run

    _, pipeline, _, _ = load_run(trained, test_mode="test")
    return pipeline
