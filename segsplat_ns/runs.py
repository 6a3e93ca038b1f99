"""Shared helpers for commands that train or load runs: find a run's config, load it, size ns-train for a CPU."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence

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
    check_segsplat_run(read_run_config(config_path), config_path)
    allow_nerfstudio_checkpoints()

    def locate_checkpoints(config):
        # an absolute relative_model_dir wins over output_dir/experiment/method/timestamp, which is cwd-relative
        config.relative_model_dir = config_path.resolve().parent / "nerfstudio_models"
        locate_dataset(config, config_path)
        return config

    return eval_setup(config_path, test_mode=test_mode, update_config_callback=locate_checkpoints)


def read_run_config(config_path: Path):
    """A run's config.yml as nerfstudio reads it (its classes are imported by the YAML tags)."""
    import yaml

    try:
        return yaml.load(Path(config_path).read_text(), Loader=yaml.Loader)
    except (yaml.YAMLError, ImportError, AttributeError, TypeError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SegsplatError(f"--load-config {config_path} is not a readable nerfstudio config.yml ({first})") from None


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


def training_folder(config, config_path: Path) -> Optional[Path]:
    """The folder ns-train ran in, from the run folder's place (<there>/<output-dir>/<experiment>/<method>/<time>/
    config.yml); None where the config's output folder is absolute or deeper than the run folder."""
    base = Path(config.get_base_dir()) if hasattr(config, "get_base_dir") else None
    run_dir = Path(config_path).resolve().parent
    if base is None or base.is_absolute() or len(base.parts) > len(run_dir.parents):
        return None
    return run_dir.parents[len(base.parts) - 1]


def missing_dataset_message(data: Path, argv: Sequence[str]) -> str:
    """What to do when nerfstudio's own loaders (ns-eval, ns-viewer, ns-render, ns-export) do not find a run's
    dataset: they read its relative paths, the checkpoints' too, from the current folder, so they must run from
    the folder ns-train ran in. ``argv``: their command line (they pass the pipeline no config path)."""
    command = Path(argv[0]).name if argv and Path(argv[0]).name.startswith("ns-") else "this command"
    config_path = load_config_argument(argv)
    if Path(data).is_absolute():
        config = config_path if config_path is not None else "the run's config.yml"
        return f"this run's dataset {data} is not found: move it back, or edit 'data:' in {config} to its new place"
    trained_in = None
    if config_path is not None and config_path.is_file():
        try:
            trained_in = training_folder(read_run_config(config_path), config_path)
        except SegsplatError:
            pass  # an unreadable config.yml: the general advice below
    if trained_in is None:
        return (f"this run's dataset {data} is not found from {Path.cwd()}: {command} reads a run's relative paths "
                "from the folder it runs in, so run it from the folder ns-train ran in")
    if trained_in == Path.cwd().resolve():
        return (f"this run's dataset {data} is not found in {trained_in} (where ns-train ran): move it back, or edit "
                f"'data:' in {config_path} to its new place")
    if not (trained_in / data).exists():
        return (f"this run's dataset {data} is not found, neither here nor in {trained_in} (where ns-train ran): "
                f"move it back, or edit 'data:' in {config_path} to its new place, and run {command} from {trained_in}")
    return (f"this run's dataset {data} is relative to {trained_in} (where ns-train ran), not to this folder: run "
            f"{command} from there (cd {trained_in}), where it finds the run's checkpoints too (segsplat commands "
            "find both from anywhere)")


def load_config_argument(argv: Sequence[str]) -> Optional[Path]:
    """The --load-config value of a command line, or None."""
    for index, arg in enumerate(argv):
        if arg in ("--load-config", "--load_config") and index + 1 < len(argv):
            return Path(argv[index + 1])
        if arg.startswith(("--load-config=", "--load_config=")):
            return Path(arg.split("=", 1)[1])
    return None
