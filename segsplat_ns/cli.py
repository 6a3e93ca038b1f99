"""`segsplat`: the plugin's one console command, with subcommands (each has --help)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Optional, Tuple, Union

import tyro


@dataclass
class Segment:
    """Select an object from a click at a chosen scale; write its Gaussians as a .ply (ns-export's format) and a PNG.

    Example: segsplat segment --load-config outputs/scene/saga/<time>/config.yml --camera 0 --pixel 48 40 --scale 0.6
    """

    load_config: Path
    """config.yml of a trained segsplat run."""
    pixel: Tuple[int, int]
    """Click position (x, y) in pixels of the chosen camera's image."""
    camera: int = 0
    """Index of the camera within --split."""
    split: Literal["eval", "train"] = "eval"
    """Which cameras --camera indexes: the held-out eval views or the training views."""
    scale: float = 0.5
    """Scale in [0, 1]: the quantile of 3D mask sizes (0 = finest parts, 1 = whole scene). binary-gaussian maps it
    to one of its levels; --level chooses the level directly."""
    level: Optional[int] = None
    """binary-gaussian only: the code level, 1 (coarsest, whole objects) .. L (finest); replaces --scale."""
    threshold: float = 0.75
    """Similarity threshold: Gaussians with affinity above it are selected."""
    output: Optional[Path] = None
    """Where to write the .ply (default: <run>/segments/cam<camera>_x<x>_y<y>_s<scale>.ply). The PNG goes beside it."""

    def main(self) -> int:
        from segsplat_ns.commands.segment import run_segment

        return run_segment(self)


def _make_scene(config) -> int:
    from segsplat_ns.synthetic import make_scene

    path = make_scene(config)
    print(f"Wrote synthetic scene to {path}")
    print(f"Train on it:  ns-train saga --data {path}")
    return 0


def entrypoint() -> None:
    from segsplat_ns.commands.bench import Bench
    from segsplat_ns.commands.bench_latency import BenchLatency
    from segsplat_ns.commands.eval_benchmark import EvalBenchmark
    from segsplat_ns.commands.demo import Demo
    from segsplat_ns.synthetic import SceneConfig

    commands = Union[
        Annotated[SceneConfig, tyro.conf.subcommand("make-scene", description="Write the bundled synthetic scene: "
                  "nerfstudio-format images and poses, seed points, per-view object/part ground truth, and SAM-like "
                  "multi-granularity masks in SAGA's sam_masks/ layout.")],
        Annotated[Segment, tyro.conf.subcommand("segment")],
        Annotated[Demo, tyro.conf.subcommand("demo")],
        Annotated[Bench, tyro.conf.subcommand("bench")],
        Annotated[BenchLatency, tyro.conf.subcommand("bench-latency")],
        Annotated[EvalBenchmark, tyro.conf.subcommand("eval-benchmark")],
    ]
    args = sys.argv[1:]
    verbatim: Optional[Tuple[str, ...]] = None
    if args[:1] == ["bench"] and "--extra-args" in args:
        # ns-train flags start with "--", which tyro would read as options of its own: everything after
        # --extra-args is passed to ns-train as it is
        at = args.index("--extra-args")
        args, verbatim = args[:at], tuple(args[at + 1 :])
    command = tyro.cli(commands, prog="segsplat", args=args)
    if verbatim is not None:
        command.extra_args = verbatim
    from segsplat_ns.errors import run_with_clear_errors

    if isinstance(command, SceneConfig):
        code = run_with_clear_errors(lambda: _make_scene(command))
    else:
        code = run_with_clear_errors(command.main)
    sys.exit(code)


if __name__ == "__main__":
    entrypoint()
