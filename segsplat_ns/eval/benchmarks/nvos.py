"""NVOS (Neural Volumetric Object Selection, Ren et al. CVPR 2022) annotations on LLFF scenes.

Layout, as SA3D's ``lib/load_nvos.py`` reads it (the annotation root sits next to the LLFF scenes)::

    <root>/reference_image/<target>/<image file>        the view the scribbles are drawn in (one file)
    <root>/scribbles/<target>/<...pos...>.png           positive scribble (non-zero pixels, any colour)
    <root>/scribbles/<target>/<...neg...>.png           negative scribble
    <root>/masks/<target>/<image file>                  the view that is scored (the image itself) ...
    <root>/masks/<target>/<...>_mask.png                ... and its ground-truth mask (0/255)

``<target>`` is the LLFF scene name (fern, flower, fortress, leaves, orchids, trex), except horns, which
has two targets ``horns_center`` and ``horns_left``; ``scene="horns"`` reads both.

Prompt: each scribble becomes up to ``max_points`` clicks spread along it (:func:`spread_points`,
default 8 positive and 8 negative), given in the reference view. SA3D instead keeps a random ~2% / 0.5%
of the skeletonised scribble pixels; ours is deterministic. The only scored view is the mask view.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from segsplat_ns.eval.benchmarks.common import (
    BenchmarkGroundTruth,
    PromptedTarget,
    image_files,
    one_file,
    read_binary_mask,
    read_scribble,
    require_dir,
    spread_points,
)
from segsplat_ns.eval.ground_truth import GroundTruthError

MAX_SCRIBBLE_POINTS = 8


def _read_target(root: Path, target: str, max_points: int) -> PromptedTarget:
    mask_dir = require_dir(root / "masks" / target, f"NVOS mask folder of {target}")
    ref_dir = require_dir(root / "reference_image" / target, f"NVOS reference view of {target}")
    scribble_dir = require_dir(root / "scribbles" / target, f"NVOS scribbles of {target}")

    files = image_files(mask_dir)
    mask_path = one_file([p for p in files if "_mask" in p.stem], mask_dir, "ground-truth mask '*_mask.png'")
    views = [p for p in files if "_mask" not in p.stem]
    # the scored view is named by its image file; without it, by the mask's name minus "_mask"
    image = one_file(views, mask_dir, "target view image").stem if views else mask_path.stem.replace("_mask", "")
    reference = one_file(image_files(ref_dir), ref_dir, "reference view image").stem

    scribbles = image_files(scribble_dir)
    pos_path = one_file([p for p in scribbles if "pos" in p.name], scribble_dir, "positive scribble '*pos*'")
    neg_path = one_file([p for p in scribbles if "neg" in p.name and "pos" not in p.name], scribble_dir, "negative scribble '*neg*'")
    positive, negative = read_scribble(pos_path), read_scribble(neg_path)
    if positive.shape != negative.shape:
        raise GroundTruthError(f"{scribble_dir}: scribbles differ in size ({positive.shape} vs {negative.shape})")
    if not positive.any():
        raise GroundTruthError(f"positive scribble {pos_path} is empty: expected non-zero scribble pixels")

    return PromptedTarget(
        name=target,
        image=image,
        mask=read_binary_mask(mask_path),
        positive_points=spread_points(positive, max_points),
        negative_points=spread_points(negative, max_points),
        reference_image=reference,
        prompt_size=tuple(positive.shape),
    )


def read_nvos(root: Path, scene: Optional[str] = None, max_points: int = MAX_SCRIBBLE_POINTS) -> BenchmarkGroundTruth:
    root = Path(root)
    masks_root = require_dir(root / "masks", "NVOS annotations: masks/, reference_image/, scribbles/")
    available = sorted(p.name for p in masks_root.iterdir() if p.is_dir())
    if scene is None:
        if len(available) != 1:
            raise GroundTruthError(f"{masks_root} holds {len(available)} NVOS targets ({', '.join(available)}): pick one with a scene")
        names: List[str] = available
    else:
        names = [name for name in available if name == scene or name.startswith(scene + "_")]
        if not names:
            raise GroundTruthError(f"no NVOS target for scene {scene!r} in {masks_root}; found {', '.join(available) or 'none'}")
    targets = [_read_target(root, name, max_points) for name in names]
    return BenchmarkGroundTruth(benchmark="nvos", scene=scene or names[0], targets=targets)
