"""Where a saved run's files are: its config.yml read without loading the pipeline, the folder ns-train ran in,
and what to say when nerfstudio's loaders miss a run's dataset. Imports no pipeline or datamanager (the
datamanager's dataset check uses it)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from segsplat_ns.errors import SegsplatError

__all__ = ["load_config_argument", "missing_dataset_message", "read_run_config", "training_folder"]


def read_run_config(config_path: Path):
    """A run's config.yml as nerfstudio reads it (its classes are imported by the YAML tags)."""
    import yaml

    try:
        return yaml.load(Path(config_path).read_text(), Loader=yaml.Loader)
    except (yaml.YAMLError, ImportError, AttributeError, TypeError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SegsplatError(f"--load-config {config_path} is not a readable nerfstudio config.yml ({first})") from None


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
        return (
            f"this run's dataset {data} is not found from {Path.cwd()}: {command} reads a run's relative paths "
            "from the folder it runs in, so run it from the folder ns-train ran in"
        )
    if trained_in == Path.cwd().resolve():
        return (
            f"this run's dataset {data} is not found in {trained_in} (where ns-train ran): move it back, or edit "
            f"'data:' in {config_path} to its new place"
        )
    if not (trained_in / data).exists():
        return (
            f"this run's dataset {data} is not found, neither here nor in {trained_in} (where ns-train ran): "
            f"move it back, or edit 'data:' in {config_path} to its new place, and run {command} from {trained_in}"
        )
    return (
        f"this run's dataset {data} is relative to {trained_in} (where ns-train ran), not to this folder: run "
        f"{command} from there (cd {trained_in}), where it finds the run's checkpoints too (segsplat commands "
        "find both from anywhere)"
    )


def load_config_argument(argv: Sequence[str]) -> Optional[Path]:
    """The --load-config value of a command line, or None."""
    for index, arg in enumerate(argv):
        if arg in ("--load-config", "--load_config") and index + 1 < len(argv):
            return Path(argv[index + 1])
        if arg.startswith(("--load-config=", "--load_config=")):
            return Path(arg.split("=", 1)[1])
    return None
