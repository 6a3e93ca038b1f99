"""Shared helpers for commands that train or load runs: find a run's config, load it, size ns-train for a CPU."""

from __future__ import annotations

from pathlib import Path
from typing import List

from segsplat_ns.errors import SegsplatError
from segsplat_ns.run_paths import load_config_argument, missing_dataset_message, read_run_config, training_folder

__all__ = [
    "check_segsplat_run",
    "find_config",
    "load_config_argument",
    "load_run",
    "locate_dataset",
    "missing_dataset_message",
    "read_run_config",
    "small_scene_training_args",
    "training_folder",
]


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
    check_segsplat_run(read_run_config(config_path), config_path)
    allow_nerfstudio_checkpoints()

    def locate_checkpoints(config):
        # an absolute relative_model_dir wins over output_dir/experiment/method/timestamp, which is cwd-relative
        config.relative_model_dir = config_path.resolve().parent / "nerfstudio_models"
        locate_dataset(config, config_path)
        return config

    return eval_setup(config_path, test_mode=test_mode, update_config_callback=locate_checkpoints)


def check_segsplat_run(config, config_path: Path) -> None:
    """Refuse, before the slow load, a run that is not a segsplat method (e.g. plain splatfacto)."""
    from segsplat_ns.pipeline import SegSplatPipelineConfig
    from segsplat_ns.registry import method_names

    pipeline = getattr(config, "pipeline", None)
    if not isinstance(pipeline, SegSplatPipelineConfig):
        method = getattr(config, "method_name", None) or type(pipeline).__name__
        raise SegsplatError(
            f"--load-config {config_path} is a '{method}' run, not a segsplat one: train one with "
            f"ns-train {' / '.join(method_names())} (with --pipeline.model.init-from {config_path} to reuse this "
            "splat and skip the RGB stage)"
        )


def locate_dataset(config, config_path: Path) -> None:
    """Find a run's dataset when its --data was relative and the command runs from another folder: relative paths
    are read from the folder ns-train ran in, which the run folder's place tells."""
    manager = config.pipeline.datamanager
    data = manager.data if getattr(manager, "data", None) is not None else manager.dataparser.data
    if data is None or Path(data).exists() or Path(data).is_absolute():
        return
    trained_in = training_folder(config, config_path)
    if trained_in is None:
        return
    candidate = trained_in / data
    if not candidate.exists():
        raise SegsplatError(
            f"this run's dataset {data} is not found, neither here nor in {trained_in} (where ns-train ran): "
            f"move it back, or edit 'data:' in {config_path} to its new place"
        )
    if getattr(manager, "data", None) is not None:
        manager.data = candidate
    manager.dataparser.data = candidate
