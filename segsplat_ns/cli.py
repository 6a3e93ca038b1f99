"""`segsplat`: the plugin's one console command, with subcommands (each has --help)."""

from __future__ import annotations

import sys
from typing import Annotated, Optional, Tuple, Union

import tyro


def _make_scene(config) -> int:
    from segsplat_ns.registry import method_names
    from segsplat_ns.synthetic import make_scene

    path = make_scene(config)
    print(f"Wrote synthetic scene to {path}")
    for name in method_names():
        print(f"Train on it:  ns-train {name} --data {path}")
    if config.language:
        print("Text prompts on it use the scene's stand-in for CLIP (not a language model): add "
              "--pipeline.datamanager.language.source folder")
    return 0


def entrypoint() -> None:
    from segsplat_ns.commands.bench import Bench
    from segsplat_ns.commands.bench_latency import BenchLatency
    from segsplat_ns.commands.demo import Demo
    from segsplat_ns.commands.eval_benchmark import EvalBenchmark
    from segsplat_ns.commands.extract import Extract
    from segsplat_ns.commands.segment import Segment
    from segsplat_ns.errors import run_with_clear_errors
    from segsplat_ns.synthetic import SceneConfig

    commands = Union[
        Annotated[
            SceneConfig,
            tyro.conf.subcommand(
                "make-scene",
                description="Write the bundled synthetic scene: nerfstudio-format images and poses, seed points, "
                "per-view object/part ground truth, SAM-like multi-granularity masks as sam_masks/<image>.pt, and a "
                "stand-in for CLIP (not a language model): per-view language features, its text encoder and "
                "LERF-OVS-style text ground truth.",
            ),
        ],
        Annotated[Segment, tyro.conf.subcommand("segment")],
        Annotated[Demo, tyro.conf.subcommand("demo")],
        Annotated[Bench, tyro.conf.subcommand("bench")],
        Annotated[BenchLatency, tyro.conf.subcommand("bench-latency")],
        Annotated[EvalBenchmark, tyro.conf.subcommand("eval-benchmark")],
        Annotated[Extract, tyro.conf.subcommand("extract")],
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

    if isinstance(command, SceneConfig):
        code = run_with_clear_errors(lambda: _make_scene(command))
    else:
        code = run_with_clear_errors(command.main)
    sys.exit(code)


if __name__ == "__main__":
    entrypoint()
