"""Ground-truth segmentation of a dataset's eval views, in the layout `segsplat make-scene` writes.

```
<data>/gt/meta.json               {"objects": [{"id", "name", "parts": [...]}], "parts": [{"id", "name", "object"}]}
<data>/gt/objects/<image>.png     uint8 id map, 0 = background
<data>/gt/parts/<image>.png       uint8 id map, 0 = background
<data>/gt/text/objects/<image>.json  text prompts: LERF-OVS labelme-style JSON (category, polygon, bbox)
<data>/gt/text/parts/<image>.json    the same for parts (optional)
```
Readers for public benchmark layouts turn theirs into the same :class:`GroundTruth`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from segsplat_ns.errors import SegsplatError

LEVEL_FOLDERS = {"object": "objects", "part": "parts"}
TextTargets = Dict[str, Tuple[np.ndarray, np.ndarray]]
"""One view's text ground truth: category -> (bool mask [H, W], boxes [K, 4] as x1, y1, x2, y2)."""


class GroundTruthError(SegsplatError, ValueError):
    """A ground-truth file exists but cannot be used; the message names the file."""


@dataclass
class GroundTruth:
    """Id maps per eval view for each level ("object", "part"); 0 is background."""

    id_maps: Dict[str, List[np.ndarray]]
    names: Dict[str, Dict[int, str]] = field(default_factory=dict)
    text: Dict[str, List[TextTargets]] = field(default_factory=dict)
    """Per level, per eval view: the text prompts annotated there (LERF-OVS style; read by
    :func:`segsplat_ns.eval.benchmarks.lerf_ovs.load_text_ground_truth`); empty without text ground truth."""

    def ids(self, level: str) -> List[int]:
        found = set()
        for id_map in self.id_maps[level]:
            found.update(int(i) for i in np.unique(id_map))
        found.discard(0)
        return sorted(found)


def _read_id_map(path: Path, size: Tuple[int, int]) -> np.ndarray:
    try:
        with Image.open(path) as image:
            id_map = np.asarray(image)
    except Exception as error:
        raise GroundTruthError(f"cannot read ground-truth mask {path}: {error}") from error
    if id_map.ndim != 2:
        raise GroundTruthError(f"ground-truth mask {path} must be a single-channel id map, got shape {id_map.shape}")
    if id_map.shape != tuple(size):
        # the dataparser may have downscaled the images: nearest-neighbour keeps ids intact
        id_map = np.asarray(Image.fromarray(id_map).resize((size[1], size[0]), Image.NEAREST))
    return id_map.astype(np.int32)


def load_ground_truth(
    data_dir: Path, image_paths: Sequence[Path], image_sizes: Sequence[Tuple[int, int]]
) -> Optional[GroundTruth]:
    """GroundTruth for these images, or None if the dataset has no gt/ folder."""
    gt_dir = Path(data_dir) / "gt"
    meta_path = gt_dir / "meta.json"
    if not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        names = {
            "object": {int(o["id"]): str(o.get("name", o["id"])) for o in meta.get("objects", [])},
            "part": {int(p["id"]): str(p.get("name", p["id"])) for p in meta.get("parts", [])},
        }
    except (ValueError, KeyError, TypeError) as error:
        raise GroundTruthError(f"malformed ground-truth index {meta_path}: {error}") from error
    id_maps: Dict[str, List[np.ndarray]] = {}
    for level, folder in LEVEL_FOLDERS.items():
        level_dir = gt_dir / folder
        if not level_dir.is_dir():
            continue
        maps = []
        for path, size in zip(image_paths, image_sizes):
            map_path = level_dir / (Path(path).stem + ".png")
            if not map_path.exists():
                raise GroundTruthError(f"missing ground-truth mask {map_path} for eval image {Path(path).name}")
            maps.append(_read_id_map(map_path, size))
        id_maps[level] = maps
    if not id_maps:
        return None
    return GroundTruth(id_maps=id_maps, names=names)
