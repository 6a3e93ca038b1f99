"""Per-image language features in LangSplat's layout: pure functions (no model, no cache).

One image's record is two arrays, stored as ``<stem>_s.npy`` and ``<stem>_f.npy``:

- ``index_maps``: ``int16 [3, H, W]``, one map per granularity level (0: subpart "s", 1: part "m",
  2: whole "l"); each pixel holds an index into ``features`` or ``-1`` (no mask of that level there).
  Indices are global, i.e. offsets into ONE concatenated feature list (level s's masks first, then m's,
  then l's), exactly as LangSplat's ``preprocess.py`` offsets every level by the cumulative lengths of the
  levels before it.
- ``features``: ``float16 [M, D]`` (D = 512 for ViT-B-16), L2-normalised CLIP image embeddings.

LangSplat/GAGS files differ in two ways, both accepted by :func:`read_record`: their ``_s.npy`` has FOUR rows
``[default, s, m, l]`` (row 0 is SAM's default-granularity output; their trainers read rows 1..3, one per
``feature_level``) and both arrays are float32 (``torch.zeros`` buffers saved as is). A 4-row file is read as
its rows 1..3; the indices stay valid because they address the full feature list.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import numpy as np

from segsplat_ns.errors import SegsplatError
from segsplat_ns.io import atomic_open

LEVELS: Tuple[str, ...] = ("s", "m", "l")
"""Granularity levels, in the order of the index-map rows: subpart, part, whole (LangSplat's s / m / l)."""

CROP_SIZE = 224
"""Side of the square crop CLIP sees (LangSplat: ``cv2.resize(pad_img(seg_img), (224, 224))``)."""

CONTAINMENT = 0.9
"""Mask a contains mask b when a is larger and covers at least this fraction of b's pixels."""

INDEX_DTYPE = np.int16
FEATURE_DTYPE = np.float16
MAX_MASKS = int(np.iinfo(INDEX_DTYPE).max)  # 32767 masks per image fit the int16 maps


class LanguageSourceError(SegsplatError):
    """Language features cannot be produced or read; the message says why and what to do instead."""


# --------------------------------------------------------------------------------------------------
# granularity levels
# --------------------------------------------------------------------------------------------------


def containment_matrix(masks: np.ndarray, threshold: float = CONTAINMENT) -> np.ndarray:
    """``bool [M, M]``: entry (a, b) is True when mask a contains mask b.

    a contains b when ``|a & b| >= threshold * |b|`` and a is larger than b (equal areas: the lower index is
    the larger, so two identical masks nest instead of containing each other). Empty masks contain nothing
    and are contained by nothing. Exact pixel counts (one float64 matrix product of the flattened masks).
    """
    masks = np.asarray(masks, dtype=bool)
    m = masks.shape[0]
    if m == 0:
        return np.zeros((0, 0), dtype=bool)
    flat = masks.reshape(m, -1).astype(np.float32)
    dtype = np.float32 if flat.shape[1] < (1 << 24) else np.float64  # float32 counts are exact below 2^24
    inter = flat.astype(dtype) @ flat.astype(dtype).T
    area = np.diag(inter).copy()
    index = np.arange(m)
    larger = (area[:, None] > area[None, :]) | ((area[:, None] == area[None, :]) & (index[:, None] < index[None, :]))
    covers = inter >= threshold * area[None, :]
    nonempty = (area[:, None] > 0) & (area[None, :] > 0)
    return larger & covers & nonempty


def assign_levels(masks: np.ndarray, threshold: float = CONTAINMENT) -> np.ndarray:
    """Granularity level of each mask, ``int64 [M]`` with 0 = s (subpart), 1 = m (part), 2 = l (whole).

    By nesting: a mask no other mask contains is a whole (l); a mask inside another that contains no mask
    itself is a subpart (s); a mask both inside one and containing one is a part (m). Exact nested sources
    (``classical``: every coarse segment is a union of finer ones) come out as their own three levels; for SAM
    the 0.9 containment threshold absorbs the ragged edges of masks of the same object.
    """
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3:
        raise ValueError(f"masks must be [M, H, W], got shape {masks.shape}")
    contains = containment_matrix(masks, threshold)
    has_parent = contains.any(axis=0)
    has_child = contains.any(axis=1)
    levels = np.full(masks.shape[0], 1, dtype=np.int64)
    levels[~has_parent] = 2
    levels[has_parent & ~has_child] = 0
    return levels


def index_maps_from_levels(masks: np.ndarray, levels: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Paint the index maps; returns ``(index_maps int16 [3, H, W], order int64 [M])``.

    ``order[k]`` is the mask whose feature goes to row k of the concatenated feature list: level s's masks
    first, then m's, then l's (LangSplat's offsets); within a level, decreasing area, and each level's map is
    painted in that order so that a smaller mask overwrites the larger ones it overlaps (LangSplat paints in
    SAM's output order; largest-first keeps every mask visible where it is the finest mask of its level).
    """
    masks = np.asarray(masks, dtype=bool)
    levels = np.asarray(levels)
    m, h, w = masks.shape
    if m > MAX_MASKS:
        raise LanguageSourceError(f"{m} masks in one image; the int16 index maps hold at most {MAX_MASKS}.")
    area = masks.reshape(m, -1).sum(axis=1)
    order = np.array(
        [i for lvl in range(len(LEVELS)) for i in sorted(np.flatnonzero(levels == lvl).tolist(), key=lambda i: (-area[i], i))],
        dtype=np.int64,
    )
    maps = np.full((len(LEVELS), h, w), -1, dtype=INDEX_DTYPE)
    for k, i in enumerate(order.tolist()):
        maps[levels[i]][masks[i]] = k
    return maps, order


# --------------------------------------------------------------------------------------------------
# crops
# --------------------------------------------------------------------------------------------------


def mask_bbox(mask: np.ndarray) -> Optional[Tuple[int, int, int, int]]:
    """Tight box ``(y0, x0, y1, x1)`` of a bool mask, end-exclusive; None for an empty mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def pad_to_square(image: np.ndarray) -> np.ndarray:
    """Centre ``[h, w, 3]`` on a black square of side ``max(h, w)`` (LangSplat's ``pad_img``: offset ``(l - s) // 2``)."""
    h, w = image.shape[:2]
    side = max(h, w)
    out = np.zeros((side, side) + image.shape[2:], dtype=image.dtype)
    top, left = (side - h) // 2, (side - w) // 2
    out[top:top + h, left:left + w] = image
    return out


def masked_crop(image: np.ndarray, mask: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """The crop CLIP sees for one mask: ``uint8 [size, size, 3]``.

    As LangSplat's ``get_seg_img`` + ``pad_img`` + ``cv2.resize``: pixels outside the mask are blacked out,
    the mask's bounding box is cut out, centred on a black square and resized bilinearly (cv2 INTER_LINEAR).
    One deliberate difference: the box is the tight inclusive box of the mask; LangSplat slices SAM's XYWH
    box, whose w/h are ``x1 - x0`` of inclusive corners, so it drops the mask's last row and column (and a
    one-pixel mask gives an empty crop that cv2 cannot resize).
    """
    import cv2

    image = np.asarray(image)
    mask = np.asarray(mask, dtype=bool)
    if image.shape[:2] != mask.shape:
        raise ValueError(f"image {image.shape[:2]} and mask {mask.shape} differ in size")
    box = mask_bbox(mask)
    if box is None:
        return np.zeros((size, size, 3), dtype=np.uint8)
    y0, x0, y1, x1 = box
    crop = image[y0:y1, x0:x1, :3].copy()
    crop[~mask[y0:y1, x0:x1]] = 0
    square = pad_to_square(crop)
    if square.shape[0] == size:
        return np.ascontiguousarray(square)
    return cv2.resize(square, (size, size), interpolation=cv2.INTER_LINEAR)


# --------------------------------------------------------------------------------------------------
# the per-image record
# --------------------------------------------------------------------------------------------------


@dataclass
class LanguageRecord:
    """One image's language supervision: ``index_maps int16 [3, H, W]`` and ``features float16 [M, D]``."""

    index_maps: np.ndarray
    features: np.ndarray

    @property
    def num_masks(self) -> int:
        return int(self.features.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes of the two arrays (the ``.npy`` files add a 128-byte header each)."""
        return int(self.index_maps.nbytes + self.features.nbytes)

    def level_features(self, level: Union[int, str]) -> Tuple[np.ndarray, np.ndarray]:
        """Dense view of one level: ``(features float16 [H, W, D], valid bool [H, W])`` (zeros where invalid)."""
        row = LEVELS.index(level) if isinstance(level, str) else int(level)
        idx = self.index_maps[row].astype(np.int64)
        valid = idx >= 0
        dense = np.zeros(idx.shape + (self.features.shape[1],), dtype=self.features.dtype)
        dense[valid] = self.features[idx[valid]]
        return dense, valid


def record_paths(folder: Path, stem: str) -> Tuple[Path, Path]:
    """``(<folder>/<stem>_s.npy, <folder>/<stem>_f.npy)``."""
    folder = Path(folder)
    return folder / f"{stem}_s.npy", folder / f"{stem}_f.npy"


def build_record(masks: np.ndarray, features_in_mask_order: np.ndarray, levels: Optional[np.ndarray] = None) -> LanguageRecord:
    """Record from masks ``bool [M, H, W]`` and their embeddings ``[M, D]`` in the masks' order."""
    masks = np.asarray(masks, dtype=bool)
    if levels is None:
        levels = assign_levels(masks)
    maps, order = index_maps_from_levels(masks, levels)
    feats = np.asarray(features_in_mask_order)[order].astype(FEATURE_DTYPE)
    return LanguageRecord(maps, feats)


def validate_record(record: LanguageRecord, where: str, expected_dim: Optional[int] = None) -> None:
    """Check shapes, dtypes and index ranges; raises :class:`LanguageSourceError` naming ``where``."""
    maps, feats = record.index_maps, record.features
    problems = []
    if maps.ndim != 3 or maps.shape[0] != len(LEVELS):
        problems.append(f"index maps have shape {tuple(maps.shape)}, expected [3, H, W]")
    if maps.dtype != INDEX_DTYPE:
        problems.append(f"index maps are {maps.dtype}, expected int16")
    if feats.ndim != 2:
        problems.append(f"features have shape {tuple(feats.shape)}, expected [M, D]")
    elif expected_dim is not None and feats.shape[1] != expected_dim:
        problems.append(f"features are {feats.shape[1]}-d, expected {expected_dim}-d")
    if feats.dtype != FEATURE_DTYPE:
        problems.append(f"features are {feats.dtype}, expected float16")
    if not problems and maps.size:
        lo, hi = int(maps.min()), int(maps.max())
        if lo < -1 or hi >= feats.shape[0]:
            problems.append(f"index maps hold indices {lo}..{hi} but there are {feats.shape[0]} features (-1 = no mask)")
    if not problems and feats.size and not np.isfinite(feats).all():
        problems.append("features contain NaN or inf")
    if problems:
        raise LanguageSourceError(f"Malformed language features {where}: " + "; ".join(problems) + ".")


def write_record(folder: Path, stem: str, record: LanguageRecord) -> Tuple[Path, Path]:
    """Write ``<stem>_s.npy`` then ``<stem>_f.npy``, each atomically; returns their paths."""
    validate_record(record, f"for {stem} (about to be written)")
    s_path, f_path = record_paths(folder, stem)
    for path, array in ((s_path, record.index_maps), (f_path, record.features)):
        with atomic_open(path) as handle:
            np.save(handle, np.ascontiguousarray(array), allow_pickle=False)
    return s_path, f_path


def _as_index_maps(arr: np.ndarray, path: Path) -> np.ndarray:
    if arr.ndim != 3 or arr.shape[0] not in (3, 4):
        raise LanguageSourceError(
            f"Malformed language features {path}: index maps of shape {tuple(arr.shape)}; expected [3, H, W] "
            f"(levels s, m, l) or LangSplat's [4, H, W] (default, s, m, l).")
    if arr.shape[0] == 4:
        arr = arr[1:]  # LangSplat/GAGS: row 0 is SAM's "default" level, rows 1..3 are s, m, l
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all() or not np.array_equal(arr, np.round(arr)):
            raise LanguageSourceError(f"Malformed language features {path}: float index maps hold non-integers.")
    elif not np.issubdtype(arr.dtype, np.integer):
        raise LanguageSourceError(f"Malformed language features {path}: index maps of dtype {arr.dtype}; expected integers.")
    if arr.size and (arr.min() < -1 or arr.max() > MAX_MASKS):
        raise LanguageSourceError(f"Malformed language features {path}: indices {arr.min()}..{arr.max()} out of range.")
    return arr.astype(INDEX_DTYPE)


def read_record(folder: Path, stem: str, expected_hw: Optional[Sequence[int]] = None,
                expected_dim: Optional[int] = None) -> LanguageRecord:
    """Read ``<stem>_s.npy`` / ``<stem>_f.npy`` (ours, or LangSplat/GAGS's 4-row float32 files) as a validated
    int16 / float16 record. ``expected_hw``: the image's (H, W); raises :class:`LanguageSourceError` naming the
    file when anything does not fit."""
    s_path, f_path = record_paths(folder, stem)
    arrays = []
    for path in (s_path, f_path):
        if not path.is_file():
            raise LanguageSourceError(
                f"Missing language features {path}. Each image needs <stem>_s.npy (index maps [3 or 4, H, W]) and "
                f"<stem>_f.npy (features [M, 512]) as LangSplat's preprocess.py writes them.")
        try:
            arrays.append(np.load(path, allow_pickle=False))
        except Exception as e:  # noqa: BLE001 - any read failure is reported with the file name
            raise LanguageSourceError(f"Malformed language features {path}: {e}. It is not a readable .npy file; "
                                      f"delete it and regenerate.") from e
    maps = _as_index_maps(arrays[0], s_path)
    feats = arrays[1]
    if feats.ndim != 2 or not np.issubdtype(feats.dtype, np.floating):
        raise LanguageSourceError(f"Malformed language features {f_path}: array of shape {tuple(feats.shape)} and "
                                  f"dtype {feats.dtype}; expected float [M, D].")
    record = LanguageRecord(maps, feats.astype(FEATURE_DTYPE))
    validate_record(record, f"{s_path} / {f_path}", expected_dim)
    if expected_hw is not None and tuple(maps.shape[1:]) != tuple(int(x) for x in expected_hw):
        raise LanguageSourceError(
            f"Language features {s_path} are {maps.shape[1]}x{maps.shape[2]}, the image is "
            f"{int(expected_hw[0])}x{int(expected_hw[1])}. Regenerate them at the training images' resolution.")
    return record
