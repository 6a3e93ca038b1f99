"""SPIn-NeRF multiview-segmentation annotations (Mirzaei et al. CVPR 2023), as SA3D and SAGA score them.

One object per scene, a binary mask in each annotated view. Accepted layouts, tried in this order::

    <root>/<scene>/<image stem>.png                 flat annotation folder, as SA3D's lib/load_spin.py reads
                                                    it (files with 'cutout' or 'pseudo' in the name skipped)
    <root>/<scene>/label/<image stem>.png
    <root>/<scene>/images_<k>/label/<image stem>.png   the SPIn-NeRF dataset release (labels 1 = object)

With no scene, ``<root>`` is the scene (or the label) folder itself. Masks are 0/1 or 0/255 PNGs; a
trailing ``_mask`` in a file name is dropped to get the image stem.

Prompt (our protocol: SAGA never released its scoring code, Jumpat/SegAnyGAussians#8): the reference view
is the first annotated view in sorted order, as SA3D's author describes (Jumpat/SegmentAnythingin3D#78);
the click is its mask's most interior pixel (:func:`segsplat_ns.eval.protocol.interior_point`). Every
annotated view, the reference included, is a scored target.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from segsplat_ns.eval.benchmarks.common import (
    BenchmarkGroundTruth,
    PromptedTarget,
    image_files,
    read_binary_mask,
    scene_folder,
)
from segsplat_ns.eval.ground_truth import GroundTruthError
from segsplat_ns.eval.protocol import interior_point

SKIPPED_NAME_PARTS = ("cutout", "pseudo")  # SPIn-NeRF's cut-out RGBs and bootstrapped pseudo-labels


def _annotations(folder: Path) -> List[Path]:
    return [p for p in image_files(folder) if p.suffix.lower() == ".png" and not any(s in p.name for s in SKIPPED_NAME_PARTS)]


def _label_folder(scene_dir: Path) -> Path:
    if _annotations(scene_dir):
        return scene_dir
    candidates = [scene_dir / "label"] + sorted(scene_dir.glob("images_*/label"))
    found = [c for c in candidates if c.is_dir() and _annotations(c)]
    if len(found) > 1:
        raise GroundTruthError(f"{scene_dir}: several label folders ({', '.join(str(f) for f in found)}); pass one as the root")
    if not found:
        raise GroundTruthError(f"no SPIn-NeRF masks in {scene_dir}: expected <view>.png masks there, in label/ or in images_<k>/label/")
    return found[0]


def read_spin_nerf(root: Path, scene: Optional[str] = None) -> BenchmarkGroundTruth:
    scene_dir, scene_name = scene_folder(root, scene, "a SPIn-NeRF scene folder of annotated masks")
    mask_paths = _annotations(_label_folder(scene_dir))
    masks = [(p.stem[: -len("_mask")] if p.stem.endswith("_mask") else p.stem, read_binary_mask(p)) for p in mask_paths]
    reference, reference_mask = masks[0]
    if not reference_mask.any():
        raise GroundTruthError(f"reference mask {mask_paths[0]} is empty: expected the object's pixels to click on")
    click = interior_point(reference_mask)
    targets = [
        PromptedTarget(
            name=scene_name,
            image=image,
            mask=mask,
            positive_points=[click],
            reference_image=reference,
            prompt_size=tuple(reference_mask.shape),
        )
        for image, mask in masks
    ]
    return BenchmarkGroundTruth(benchmark="spin-nerf", scene=scene_name, targets=targets)
