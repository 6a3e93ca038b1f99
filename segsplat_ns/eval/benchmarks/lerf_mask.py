"""LERF-Mask (introduced by Gaussian Grouping), as its ``script/eval_lerf_mask.py`` reads it.

Layout (Gaussian Grouping ``docs/dataset.md``; scenes figurines, ramen, teatime)::

    <root>/<scene>/images/<frame>.jpg             all views (COLMAP scene)
    <root>/<scene>/images_train/<frame>.jpg       the training views
    <root>/<scene>/test_mask/<view>/<prompt>.png  ground truth of text prompt <prompt> in test view <view>

``<view>`` is the index of a test view: the test views are the images in ``images/`` that are not in
``images_train/``, sorted by name (Gaussian Grouping's ``readColmapSceneInfo`` with ``train_split``;
its renders are written to ``test_mask/<index>/``; lkeab/gaussian-grouping#16 speaks of "test views 0, 1,
and 2"). A ``<view>`` that is an image stem is taken as that image. Masks are binarised with ``> 128`` as
the reference script does. With no scene, ``<root>`` is the scene folder.

Prompt: the file name is the text prompt (``text`` and ``name``); there are no clicks.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from segsplat_ns.eval.benchmarks.common import (
    BenchmarkGroundTruth,
    PromptedTarget,
    image_files,
    read_binary_mask,
    require_dir,
    scene_folder,
)
from segsplat_ns.eval.ground_truth import GroundTruthError


def _test_view_stems(scene_dir: Path, view_dir: Path) -> List[str]:
    why = f"to map the numbered test view {view_dir} to an image"
    images = image_files(require_dir(scene_dir / "images", f"the scene's images/ {why}"))
    train = {p.stem for p in image_files(require_dir(scene_dir / "images_train", f"images_train/ {why}"))}
    return sorted(p.stem for p in images if p.stem not in train)


def _view_image(scene_dir: Path, view_dir: Path) -> str:
    images = scene_dir / "images"
    if images.is_dir() and any(p.stem == view_dir.name for p in image_files(images)):
        return view_dir.name
    if not view_dir.name.isdigit():
        raise GroundTruthError(f"{view_dir}: expected a test-view index or an image stem from {images}")
    test_stems = _test_view_stems(scene_dir, view_dir)
    index = int(view_dir.name)
    if index >= len(test_stems):
        raise GroundTruthError(f"{view_dir}: test view {index} does not exist, the scene has {len(test_stems)} test views (images/ minus images_train/)")
    return test_stems[index]


def read_lerf_mask(root: Path, scene: Optional[str] = None) -> BenchmarkGroundTruth:
    scene_dir, scene_name = scene_folder(root, scene, "a LERF-Mask scene folder with test_mask/")
    test_mask = require_dir(scene_dir / "test_mask", "LERF-Mask ground truth test_mask/<view>/<prompt>.png")
    view_dirs = sorted((p for p in test_mask.iterdir() if p.is_dir()), key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))
    if not view_dirs:
        raise GroundTruthError(f"{test_mask} has no view folders: expected test_mask/<view>/<prompt>.png")
    targets = []
    for view_dir in view_dirs:
        image = _view_image(scene_dir, view_dir)
        prompt_files = [p for p in image_files(view_dir) if p.suffix.lower() == ".png"]
        if not prompt_files:
            raise GroundTruthError(f"{view_dir} has no masks: expected <prompt>.png files")
        for path in prompt_files:
            targets.append(PromptedTarget(name=path.stem, image=image, mask=read_binary_mask(path), text=path.stem))
    return BenchmarkGroundTruth(benchmark="lerf-mask", scene=scene_name, targets=targets)
