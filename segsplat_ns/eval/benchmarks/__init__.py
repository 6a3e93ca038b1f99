"""Readers for public 3D-segmentation benchmarks, each turning a downloaded dataset's ground truth into
masks plus the prompts that select them (:class:`BenchmarkGroundTruth`).

=============  =====================================================  ==============================
benchmark      ground truth                                           prompt
=============  =====================================================  ==============================
``nvos``       one mask per LLFF scene, in one view                   scribbles -> clicks, ref. view
``spin-nerf``  one object's mask in each annotated view               click at the first view's centre
``lerf-mask``  ``test_mask/<view>/<prompt>.png``                      text
``replica``    instance-id maps of Gaga's test views                  none (Hungarian matching)
``lerf-ovs``   labelme polygons ``label/<scene>/frame_*.json``        text
=============  =====================================================  ==============================

Each module's docstring gives the exact layout it reads; ``docs/public-benchmarks.md`` how to run them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, Optional

from segsplat_ns.eval.benchmarks.common import BenchmarkGroundTruth, PromptedTarget
from segsplat_ns.eval.benchmarks.lerf_mask import read_lerf_mask
from segsplat_ns.eval.benchmarks.lerf_ovs import read_lerf_ovs
from segsplat_ns.eval.benchmarks.nvos import read_nvos
from segsplat_ns.eval.benchmarks.replica import read_replica
from segsplat_ns.eval.benchmarks.spin_nerf import read_spin_nerf
from segsplat_ns.eval.ground_truth import GroundTruthError

READERS: Dict[str, Callable[[Path, Optional[str]], BenchmarkGroundTruth]] = {
    "nvos": read_nvos,
    "spin-nerf": read_spin_nerf,
    "lerf-mask": read_lerf_mask,
    "replica": read_replica,
    "lerf-ovs": read_lerf_ovs,
}
BENCHMARKS = tuple(READERS)
TEXT_BENCHMARKS = ("lerf-mask", "lerf-ovs")  # prompts are text: they need a method with a text mode

__all__ = [
    "BENCHMARKS",
    "TEXT_BENCHMARKS",
    "BenchmarkGroundTruth",
    "PromptedTarget",
    "read_benchmark",
    "read_lerf_mask",
    "read_lerf_ovs",
    "read_nvos",
    "read_replica",
    "read_spin_nerf",
]


def read_benchmark(benchmark: str, root: Path, scene: Optional[str] = None) -> BenchmarkGroundTruth:
    """Ground truth and prompts of ``scene`` in a downloaded benchmark at ``root`` (see each reader for
    the layout; with no scene, ``root`` is the scene's own folder, except for NVOS)."""
    key = benchmark.lower().replace("_", "-")
    if key not in READERS:
        raise ValueError(f"unknown benchmark {benchmark!r}: expected one of {', '.join(BENCHMARKS)}")
    root = Path(root)
    if not root.exists():
        raise GroundTruthError(f"benchmark root {root} does not exist: expected the downloaded {key} dataset")
    return READERS[key](root, scene)
