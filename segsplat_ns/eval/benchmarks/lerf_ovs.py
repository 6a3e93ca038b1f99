"""LERF-OVS (LangSplat's open-vocabulary annotations of LERF scenes), as ``eval/evaluate_iou_loc.py`` reads it.

Layout (scenes figurines, ramen, teatime, waldo_kitchen)::

    <root>/<scene>/images/frame_<NNNNN>.jpg      the scene (COLMAP)
    <root>/label/<scene>/frame_<NNNNN>.json      annotations of one view (and frame_<NNNNN>.jpg beside it)

Each JSON::

    {"info": {"name": "frame_00041.jpg", "width": W, "height": H, ...},
     "objects": [{"category": "<text prompt>", "segmentation": [[x, y], ...], "bbox": [x1, y1, x2, y2]}, ...]}

Each object's polygon is rasterised; the objects of one category in one view are united into one mask
(LangSplat's ``stack_mask``). Vertices are truncated to integers and boundary pixels are filled, as
LangSplat's ``cv2.fillPoly`` on ``int32`` points does. Variants read too: plain labelme files
(``imageWidth``/``imageHeight``/``imagePath``, ``shapes[].label``/``points``), a ``segmentation`` that is
a list of polygons or a flat ``[x1, y1, x2, y2, ...]`` list. The image stem is ``info.name`` (or
``imagePath``) without extension, else the JSON's stem. ``bbox`` ([x1, y1, x2, y2], LangSplat's localisation
accuracy) is read by :func:`read_view_boxes`; a missing one is the polygon's bounding box. Scene lookup:
``<root>/label/<scene>``, else ``<root>/<scene>``; with no scene,
``<root>`` is the folder of JSON files.

Prompt: the category is the text prompt (``text`` and ``name``); there are no clicks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

from segsplat_ns.eval.benchmarks.common import BenchmarkGroundTruth, PromptedTarget, require_dir
from segsplat_ns.eval.ground_truth import LEVEL_FOLDERS, GroundTruthError, TextTargets

Polygon = List[Tuple[int, int]]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_point(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_number(v) for v in value)


def polygons(segmentation: Any, where: str) -> List[Polygon]:
    """Polygons of one object: ``[[x, y], ...]``, a list of those, or flat ``[x1, y1, x2, y2, ...]``."""
    if isinstance(segmentation, list) and segmentation and all(_is_point(p) for p in segmentation):
        raw = [segmentation]
    elif isinstance(segmentation, list) and segmentation and all(isinstance(p, list) and p and all(_is_point(q) for q in p) for p in segmentation):
        raw = segmentation
    elif isinstance(segmentation, list) and len(segmentation) % 2 == 0 and segmentation and all(_is_number(v) for v in segmentation):
        raw = [list(zip(segmentation[0::2], segmentation[1::2]))]
    else:
        raise GroundTruthError(f"{where}: expected a polygon [[x, y], ...] (or a list of them), got {str(segmentation)[:80]}")
    result = []
    for polygon in raw:
        if len(polygon) < 3:
            raise GroundTruthError(f"{where}: a polygon needs at least 3 points, got {len(polygon)}")
        result.append([(int(x), int(y)) for x, y in polygon])  # int() truncates, as LangSplat's int32 cast
    return result


def rasterize(polygon_list: Sequence[Polygon], height: int, width: int) -> np.ndarray:
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for polygon in polygon_list:
        draw.polygon(polygon, fill=1, outline=1)
    return np.asarray(canvas) > 0


def _size_and_image(data: Dict[str, Any], path: Path) -> Tuple[int, int, str]:
    info = data.get("info") if isinstance(data.get("info"), dict) else {}
    height = info.get("height", data.get("imageHeight"))
    width = info.get("width", data.get("imageWidth"))
    if not (isinstance(height, int) and isinstance(width, int) and height > 0 and width > 0):
        raise GroundTruthError(f"{path}: expected the image size in info.height/info.width (or imageHeight/imageWidth)")
    name = info.get("name") or data.get("imagePath") or path.name
    return height, width, Path(str(name).replace("\\", "/")).stem


def _objects(data: Dict[str, Any], path: Path) -> List[Tuple[str, Any, Dict[str, Any]]]:
    if isinstance(data.get("objects"), list):
        entries, label_key, polygon_key = data["objects"], "category", "segmentation"
    elif isinstance(data.get("shapes"), list):  # plain labelme
        entries, label_key, polygon_key = data["shapes"], "label", "points"
    else:
        raise GroundTruthError(f"{path}: expected an 'objects' list (LangSplat) or a 'shapes' list (labelme)")
    result = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get(label_key), str) or polygon_key not in entry:
            raise GroundTruthError(f"{path}: object {i} needs a '{label_key}' string and a '{polygon_key}' polygon")
        result.append((entry[label_key], entry[polygon_key], entry))
    return result


def read_view(path: Path) -> Tuple[str, Dict[str, np.ndarray]]:
    """(image stem, {category: bool mask}) of one annotation file."""
    image, targets = read_view_boxes(path)
    return image, {category: mask for category, (mask, _) in targets.items()}


def _box(entry: Dict[str, Any], polygon_list: List[Polygon], where: str) -> np.ndarray:
    box = entry.get("bbox")
    if box is None:
        points = np.array([p for polygon in polygon_list for p in polygon], dtype=np.float64)
        return np.concatenate([points.min(axis=0), points.max(axis=0)])
    values = np.asarray(box, dtype=np.float64).reshape(-1) if isinstance(box, list) else np.zeros(0)
    if values.shape != (4,) or not np.isfinite(values).all():
        raise GroundTruthError(f"{where}: bbox must be [x1, y1, x2, y2], got {str(box)[:80]}")
    return values


def read_view_boxes(path: Path) -> Tuple[str, Dict[str, Tuple[np.ndarray, np.ndarray]]]:
    """(image stem, {category: (bool mask, boxes float [K, 4] x1 y1 x2 y2)}) of one annotation file."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise GroundTruthError(f"cannot read {path}: expected a labelme-style JSON file ({error})") from error
    if not isinstance(data, dict):
        raise GroundTruthError(f"{path}: expected a JSON object")
    height, width, image = _size_and_image(data, path)
    shapes: Dict[str, List[Polygon]] = {}
    boxes: Dict[str, List[np.ndarray]] = {}
    for i, (category, segmentation, entry) in enumerate(_objects(data, path)):
        where = f"{path}, object {i} ({category})"
        polygon_list = polygons(segmentation, where)
        shapes.setdefault(category, []).extend(polygon_list)
        boxes.setdefault(category, []).append(_box(entry, polygon_list, where))
    return image, {category: (rasterize(polys, height, width), np.stack(boxes[category]))
                   for category, polys in shapes.items()}


def _label_folder(root: Path, scene: Optional[str]) -> Path:
    if scene is None:
        return require_dir(root, "a folder of LERF-OVS frame_*.json annotations")
    for folder in (root / "label" / scene, root / scene):
        if folder.is_dir() and any(folder.glob("*.json")):
            return folder
    raise GroundTruthError(f"missing folder {root / 'label' / scene}: expected LERF-OVS annotations label/<scene>/frame_*.json")


def read_lerf_ovs(root: Path, scene: Optional[str] = None) -> BenchmarkGroundTruth:
    folder = _label_folder(Path(root), scene)
    paths = sorted(folder.glob("*.json"))
    if not paths:
        raise GroundTruthError(f"no annotation files in {folder}: expected frame_*.json")
    targets = []
    for path in paths:
        image, read = read_view_boxes(path)
        targets.extend(PromptedTarget(name=category, image=image, mask=mask, text=category, boxes=boxes)
                       for category, (mask, boxes) in read.items())
    return BenchmarkGroundTruth(benchmark="lerf-ovs", scene=scene or folder.resolve().name, targets=targets)


def load_text_ground_truth(data_dir: Path, image_paths: Sequence[Path],
                           image_sizes: Sequence[Tuple[int, int]]) -> Dict[str, List[TextTargets]]:
    """A dataset's own text ground truth: ``<data>/gt/text/<objects|parts>/<image stem>.json`` per eval image (the
    layout ``segsplat make-scene`` writes), per level that has the folder; a view without a file has no text
    targets. Masks and boxes are scaled to the image size when it differs."""
    text: Dict[str, List[TextTargets]] = {}
    for level, folder in LEVEL_FOLDERS.items():
        level_dir = Path(data_dir) / "gt" / "text" / folder
        if not level_dir.is_dir():
            continue
        views: List[TextTargets] = []
        for path, size in zip(image_paths, image_sizes):
            json_path = level_dir / (Path(path).stem + ".json")
            targets: TextTargets = {}
            if json_path.exists():
                _, read = read_view_boxes(json_path)
                for category, (mask, boxes) in read.items():
                    if mask.shape != tuple(size):
                        scale = np.array([size[1] / mask.shape[1], size[0] / mask.shape[0]] * 2)
                        mask = np.asarray(Image.fromarray(mask).resize((size[1], size[0]), Image.NEAREST))
                        boxes = boxes * scale
                    targets[category] = (mask.astype(bool), boxes)
            views.append(targets)
        text[level] = views
    return text
