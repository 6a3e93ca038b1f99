"""The synthetic scene's language features and text ground truth: a stand-in for CLIP, not a language model.

``segsplat make-scene`` calls :func:`write_language` after rendering; it writes

- ``language_features/<stem>_s.npy`` / ``<stem>_f.npy`` for every train view, in the layout of
  ``segsplat_ns.language.features`` (levels by :func:`~segsplat_ns.language.features.assign_levels`), one
  embedding per mask of that view's ``sam_masks/<stem>.pt`` (the same masks, in the same order);
- ``language_features/text_encoder.json`` + ``.npy``: the stand-in text encoder's vocabulary
  (``segsplat_ns.language.stand_in``), every kind's phrases, not only this scene's;
- ``gt/text/objects/<stem>.json`` and ``gt/text/parts/<stem>.json`` for every eval view, LERF-OVS style
  (``segsplat_ns.eval.benchmarks.lerf_ovs``): per visible object (part) one entry per blob, category the
  object kind ("table", shared by two tables) or "<kind> <part>" ("lamp shade"), the polygon traced from the
  ground-truth id map (outer contours, holes dropped).

What a mask shows is read off the view's id maps: the parts of one object (the object with the most pixels
under the mask) of which the mask covers at least half the visible pixels. All of the object's visible parts
and IoU >= OBJECT_IOU with the object's mask: the object's concept; one part: that part's concept; several
(SAM merged neighbours): the normalised mean of their concepts. Flaws, from the rng ``[seed, 5]``:

- wrong level: a part mask gets its object's concept with probability ``LEVEL_FLAW`` (CLIP sees context);
- noise: isotropic Gaussian noise scaled so that the cosine to the clean concept is ``NOISE_COSINE`` on
  average, then normalised.

A clean concept's image embedding is ``normalise(IMAGE_PHOTO * photo + sqrt(1 - IMAGE_PHOTO^2) * text)``:
the photo component it shares with the canonical phrases is what LERF's relevancy
``min_c softmax(10 [cos(e, q), cos(e, c)])[0]`` compares against. Measured on the embeddings as written
(float16), default scene (3 objects, 96 px, 24 train views), seeds 0-3: median relevancy of an object-kind
query on the queried object's object masks 0.875 (all > 0.5), on its part and merged-part masks 0.42, on other
objects' masks 0.02; of a part query ("lamp shade") on that part's masks 0.87, on its object's masks 0.40,
on its sibling parts' masks 0.15. IMAGE_PHOTO 0.70 / 0.75 gave 0.90 / 0.82 (object) and 0.47 / 0.35 (parts).
``tests/test_synthetic_language.py`` prints these medians for seeds 0 and 1.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import numpy as np

from segsplat_ns.io import atomic_open
from segsplat_ns.language import stand_in
from segsplat_ns.language.features import build_record, write_record

LANGUAGE_DIR = "language_features"
TEXT_GT_DIR = ("gt", "text")
LEVEL_FLAW = 0.15
"""Probability that a part mask's embedding is its object's concept."""
NOISE_COSINE = 0.85
"""Mean cosine between a mask's embedding and its clean concept."""
IMAGE_PHOTO = 0.72
"""Weight of the shared photo direction in a clean image embedding."""
COVERED = 0.5
"""A mask shows a part when it covers at least this fraction of the part's visible pixels."""
OBJECT_IOU = 0.7
"""... and shows the object when it shows all its visible parts and overlaps the object mask this much."""
MIN_GT_AREA = 20
"""Objects and parts with fewer visible pixels get no text ground truth in that view."""

_NOISE_SIGMA = float(np.sqrt((1.0 / NOISE_COSINE**2 - 1.0) / stand_in.DIM))  # |n|^2 ~ D sigma^2 -> cos = NOISE_COSINE


def image_embedding(text_vector: np.ndarray) -> np.ndarray:
    """A clean concept's image-side embedding (unit): its text vector plus the shared photo direction."""
    v = IMAGE_PHOTO * stand_in.PHOTO + np.sqrt(1.0 - IMAGE_PHOTO**2) * np.asarray(text_vector, dtype=np.float64)
    return v / np.linalg.norm(v)


def object_kind(name: str, kinds: Mapping[str, Any]) -> str:
    """The kind of an object named by ``build_scene`` ("table" or "table_2" -> "table")."""
    if name in kinds:
        return name
    base = re.sub(r"_\d+$", "", name)
    if base not in kinds:
        raise ValueError(f"object {name!r} is of no known kind ({', '.join(kinds)})")
    return base


class _Labels:
    """Kind, part word and clean image embeddings of the scene's objects and parts."""

    def __init__(self, scene: Any, kinds: Mapping[str, Sequence[str]]):
        self.kind = {o.id: object_kind(o.name, kinds) for o in scene.objects}
        self.part_object = {p.id: p.object_id for p in scene.parts}
        self.part_word = {p.id: p.name.split("/", 1)[1] for p in scene.parts}
        self.object_parts = {o.id: list(o.part_ids) for o in scene.objects}
        self.object_image = {oid: image_embedding(stand_in.object_vector(k)) for oid, k in self.kind.items()}
        self.part_image = {
            pid: image_embedding(stand_in.part_vector(self.kind[self.part_object[pid]], self.part_word[pid]))
            for pid in self.part_object
        }

    def part_category(self, pid: int) -> str:
        return stand_in.part_phrase(self.kind[self.part_object[pid]], self.part_word[pid])


def classify_mask(mask: np.ndarray, parts_map: np.ndarray, objects_map: np.ndarray,
                  labels: _Labels) -> Tuple[str, int, List[int]]:
    """What one mask shows: ``("object", object id, parts)``, ``("part", object id, [part])`` or
    ``("merged", object id, parts)``."""
    part_area = np.bincount(parts_map.ravel(), minlength=len(labels.part_object) + 1)
    under = np.bincount(parts_map[mask], minlength=part_area.size)
    obj_under = np.bincount(objects_map[mask], minlength=len(labels.kind) + 1)
    obj_under[0] = 0
    oid = int(obj_under.argmax())
    if obj_under[oid] == 0:  # a mask on background only (cannot come from sam_like_masks): call it the nearest part
        oid = labels.part_object[int(part_area[1:].argmax()) + 1]
    visible = [p for p in labels.object_parts[oid] if part_area[p] > 0]
    shown = [p for p in visible if under[p] >= COVERED * part_area[p]]
    if not shown:
        shown = [max(visible, key=lambda p: under[p])]
    if len(shown) == len(visible):
        om = objects_map == oid
        iou = np.logical_and(mask, om).sum() / max(1, np.logical_or(mask, om).sum())
        if iou >= OBJECT_IOU:
            return "object", oid, shown
    return ("part" if len(shown) == 1 else "merged"), oid, shown


def mask_embeddings(masks: np.ndarray, parts_map: np.ndarray, objects_map: np.ndarray, labels: _Labels,
                    rng: np.random.Generator) -> Tuple[np.ndarray, List[Tuple[str, int, List[int]]]]:
    """Noisy unit embeddings ``float64 [M, D]`` of one view's masks (in their order) and what each shows."""
    out = np.zeros((masks.shape[0], stand_in.DIM))
    shows = []
    for i, mask in enumerate(masks):
        what, oid, parts = classify_mask(mask, parts_map, objects_map, labels)
        wrong_level = rng.random() < LEVEL_FLAW  # drawn for every mask: the stream does not depend on the labels
        noise = rng.standard_normal(stand_in.DIM)
        if what == "object" or (what == "part" and wrong_level):
            clean = labels.object_image[oid]
        else:
            clean = np.mean([labels.part_image[p] for p in parts], axis=0)
            clean = clean / np.linalg.norm(clean)
        e = clean + _NOISE_SIGMA * noise
        out[i] = e / np.linalg.norm(e)
        shows.append((what, oid, parts))
    return out, shows


def _polygons(mask: np.ndarray) -> List[Tuple[List[List[int]], List[int]]]:
    """Outer contours of a bool mask as ``([[x, y], ...], [x1, y1, x2, y2])``, one per blob (holes dropped)."""
    import cv2

    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    out = []
    for contour in contours:
        points = contour.reshape(-1, 2).tolist()
        while len(points) < 3:  # a one- or two-pixel blob: LERF-OVS readers need three vertices
            points.append(points[-1])
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        out.append((points, [min(xs), min(ys), max(xs), max(ys)]))
    return out


def text_ground_truth(stem: str, ids: np.ndarray, categories: Mapping[int, str]) -> Dict[str, Any]:
    """LERF-OVS annotation of one view: an entry per blob of every id (with >= MIN_GT_AREA pixels) in ``ids``."""
    h, w = ids.shape
    objects = []
    for i, category in categories.items():
        mask = ids == i
        if mask.sum() < MIN_GT_AREA:
            continue
        for polygon, bbox in _polygons(mask):
            objects.append({"category": category, "segmentation": polygon, "bbox": bbox})
    return {"info": {"name": f"{stem}.png", "width": int(w), "height": int(h)}, "objects": objects}


def _write_json(path: Path, obj: Any) -> None:
    with atomic_open(path) as handle:
        handle.write((json.dumps(obj, separators=(",", ":")) + "\n").encode("utf-8"))


def write_language(
    output: Path,
    scene: Any,
    kinds: Mapping[str, Sequence[str]],
    train_views: Sequence[Tuple[str, np.ndarray, np.ndarray, np.ndarray]],
    eval_views: Sequence[Tuple[str, np.ndarray, np.ndarray]],
    seed: int,
) -> None:
    """Write the files listed in the module docstring into ``output``.

    ``scene``: ``synthetic.Scene``; ``kinds``: every object kind's part names (the vocabulary covers them all);
    ``train_views``: ``(stem, sam masks [M, H, W], parts map, objects map)``; ``eval_views``: ``(stem, parts map,
    objects map)``. The flaws are drawn from ``default_rng([seed, 5])``, a stream no other file uses.
    """
    output = Path(output)
    rng = np.random.default_rng([seed, 5])
    labels = _Labels(scene, kinds)
    folder = output / LANGUAGE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    stand_in.write_vocabulary(folder, kinds)
    for stem, masks, parts_map, objects_map in train_views:
        features, _ = mask_embeddings(masks, parts_map, objects_map, labels, rng)
        write_record(folder, stem, build_record(masks, features))
    object_categories = dict(labels.kind)
    part_categories = {pid: labels.part_category(pid) for pid in labels.part_object}
    gt = output.joinpath(*TEXT_GT_DIR)
    for stem, parts_map, objects_map in eval_views:
        _write_json(gt / "objects" / f"{stem}.json", text_ground_truth(stem, objects_map, object_categories))
        _write_json(gt / "parts" / f"{stem}.json", text_ground_truth(stem, parts_map, part_categories))
