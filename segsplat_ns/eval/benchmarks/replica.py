"""Replica instance segmentation, as Gaga prepares and scores it (``data/replica/__init__.py``, ``eval.py``).

Gaga copies Semantic-NeRF's pre-rendered Replica (office_0-4, room_0-2; every 5th frame of 900 for
training, the frame 2 after it for testing) into::

    <root>/<scene>/input/{train,test}_rgb_<NNNN>.png                     RGB (COLMAP copies them to images/)
    <root>/<scene>/semantic_instance/{train,test}_semantic_instance_<NNNN>.png   instance-id maps
    <root>/<scene>/vis_sem_instance/...                                  colour visualisations (ignored)

``eval.py`` pairs the render of ``test_rgb_<NNNN>`` with ``test_semantic_instance_<NNNN>``, so the id map
of ``<split>_semantic_instance_<N>`` is keyed by image stem ``<split>_rgb_<N>``. Only the ``test`` split
is kept by default, as Gaga scores only test views. Semantic-NeRF's own layout,
``<root>/<scene>/Sequence_1/semantic_instance/semantic_instance_<N>.png`` (images ``rgb/rgb_<N>.png``),
is also read, every view kept. Maps are single-channel 8- or 16-bit PNGs.

Metrics: Hungarian-matched mIoU / precision / recall (:func:`segsplat_ns.eval.metrics.hungarian_instance_metrics`)
of a predicted instance map against these; there are no prompts, so ``targets`` is empty.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from segsplat_ns.eval.benchmarks.common import BenchmarkGroundTruth, image_files, read_array, scene_folder
from segsplat_ns.eval.ground_truth import GroundTruthError

INSTANCE_NAME = re.compile(r"^(?:(?P<split>train|test)_)?semantic_instance_(?P<frame>\d+)$")


def _instance_folder(scene_dir: Path) -> Path:
    for folder in (scene_dir / "semantic_instance", scene_dir / "Sequence_1" / "semantic_instance"):
        if folder.is_dir():
            return folder
    raise GroundTruthError(f"missing folder {scene_dir / 'semantic_instance'}: expected Replica instance maps "
                           "<split>_semantic_instance_<N>.png (Gaga) or Sequence_1/semantic_instance/ (Semantic-NeRF)")


def read_replica(root: Path, scene: Optional[str] = None, split: Optional[str] = "test") -> BenchmarkGroundTruth:
    scene_dir, scene_name = scene_folder(root, scene, "a Replica scene folder (Gaga layout)")
    folder = _instance_folder(scene_dir)
    maps: Dict[str, np.ndarray] = {}
    for path in image_files(folder):
        if path.name.startswith("vis_"):  # Semantic-NeRF keeps colour visualisations next to the maps
            continue
        match = INSTANCE_NAME.match(path.stem)
        if match is None:
            raise GroundTruthError(f"unexpected file {path}: expected [train_|test_]semantic_instance_<N>.png")
        if match["split"] and split and match["split"] != split:
            continue
        id_map = read_array(path, "a single-channel instance-id map")
        if id_map.ndim != 2:
            raise GroundTruthError(f"instance map {path} has shape {id_map.shape}: expected a single-channel id map, not colour")
        prefix = f"{match['split']}_" if match["split"] else ""
        maps[f"{prefix}rgb_{match['frame']}"] = id_map.astype(np.int32)
    if not maps:
        raise GroundTruthError(f"no instance maps{f' of the {split} split' if split else ''} in {folder}")
    return BenchmarkGroundTruth(benchmark="replica", scene=scene_name, targets=[], instance_maps=maps)
