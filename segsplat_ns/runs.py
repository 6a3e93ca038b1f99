"""Shared helpers for commands that train or load runs: find a run's config, load it, size ns-train for a CPU."""

from __future__ import annotations

from pathlib import Path
from typing import List

from segsplat_ns.errors import SegsplatError


def small_scene_training_args(rgb_steps: int, feature_steps: int) -> List[str]:
    """ns-train flags that fit splatfacto's schedule to a small scene trained for a few thousand steps."""
    return [
        "--max-num-iterations", str(rgb_steps + feature_steps),
        "--pipeline.model.rgb-steps", str(rgb_steps),
        "--pipeline.model.num-downscales", "0",
        "--pipeline.model.warmup-length", str(max(rgb_steps // 10, 50)),
        "--pipeline.model.refine-every", str(max(rgb_steps // 30, 25)),
        "--pipeline.model.reset-alpha-every", "10",
        "--pipeline.model.stop-split-at", str(int(rgb_steps * 0.6)),
        "--pipeline.model.sh-degree-interval", str(max(rgb_steps // 6, 50)),
        "--pipeline.model.background-color", "white",
        "--steps-per-save", str(rgb_steps + feature_steps),
        "--steps-per-eval-image", str(10 * (rgb_steps + feature_steps)),
        "--logging.local-writer.max-log-size", "0",
    ]  # fmt: skip


def find_config(run_root: Path) -> Path:
    """The newest config.yml under a folder of runs."""
    configs = sorted(Path(run_root).rglob("config.yml"), key=lambda p: p.stat().st_mtime)
    if not configs:
        raise FileNotFoundError(f"no config.yml under {run_root}: did ns-train fail?")
    return configs[-1]


def load_run(config_path: Path, test_mode: str = "test"):
    """A trained run's (config, pipeline, checkpoint, step), found from its config.yml wherever the command runs."""
    from nerfstudio.utils.eval_utils import eval_setup

    from segsplat_ns.compat import allow_nerfstudio_checkpoints

    config_path = Path(config_path)
    if not config_path.is_file():
        raise SegsplatError(f"--load-config {config_path}: no such file (pass the config.yml inside a run's folder)")
    allow_nerfstudio_checkpoints()

    def locate_checkpoints(config):
        # an absolute relative_model_dir wins over output_dir/experiment/method/timestamp, which is cwd-relative
        config.relative_model_dir = config_path.resolve().parent / "nerfstudio_models"
        return config

    return eval_setup(config_path, test_mode=test_mode, update_config_callback=locate_checkpoints)
