"""Text relevancy and LangSplat's 2D evaluation of a relevancy map: pure functions (torch and numpy, no models).

Relevancy (LERF Eq. 2, as LangSplat's ``OpenCLIPNetwork.get_relevancy`` computes it): for an embedding e, a query
q and canonical phrases c_1..c_C ("object", "things", "stuff", "texture"),

    r(e, q) = min_i  exp(10 e.q) / (exp(10 e.q) + exp(10 e.c_i))

i.e. a pairwise softmax with temperature 1/10 against each canonical phrase, keeping the least favourable one.
r > 0.5 means the embedding is closer to the query than to every canonical phrase.

The 2D mask and localisation follow LangSplat's ``eval/evaluate_iou_loc.py`` on LERF-OVS:

- mask: ``r' = (box(r) + r) / 2`` (a 30 x 30 box filter, ``cv2.filter2D``), min-max normalised to [0, 1], mapped
  to ``2n - 1``, clipped at 0 and thresholded at 0.4 (so: normalised relevancy > 0.7), then a 7 x 7 majority
  filter (their ``utils.smooth``);
- localisation: a hit when the maximum of ``box(r)`` lies in one of the category's boxes (any pixel that
  attains it counts).

LangSplat's box and smoothing windows are in pixels of LERF's ~832-row images; on smaller images both are scaled
by ``height / 832`` (:func:`eval_windows`), so a 96-row image gets a 3 x 3 box and no smoothing.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np
import torch

CANONICAL_PHRASES: Tuple[str, ...] = ("object", "things", "stuff", "texture")
"""LERF's and LangSplat's negatives."""
TEMPERATURE = 10.0
"""Logit scale of the pairwise softmax (LangSplat: ``torch.softmax(10 * sims, dim=-1)``)."""
MASK_THRESHOLD = 0.4
"""LangSplat's ``--mask_thresh`` (applied after the 2n - 1 stretch)."""
BOX_SIZE = 30
SMOOTH_RADIUS = 3
REFERENCE_HEIGHT = 832
"""Rows of the LERF-OVS renders LangSplat's window sizes were chosen for."""


def relevancy(embeddings: torch.Tensor, query: torch.Tensor, canonical: torch.Tensor,
              temperature: float = TEMPERATURE) -> torch.Tensor:
    """r(e, q) for unit embeddings ``[..., D]``, a unit query ``[D]`` and canonical phrases ``[C, D]``: ``[...]``."""
    embeddings = embeddings.float()
    positive = embeddings @ query.float().to(embeddings.device)  # [...]
    negative = embeddings @ canonical.float().to(embeddings.device).T  # [..., C]
    # softmax([p, n])[0] = sigmoid(t (p - n)); the minimum over canonical phrases is at the largest n
    return torch.sigmoid(temperature * (positive.unsqueeze(-1) - negative)).amin(dim=-1)


def eval_windows(height: int) -> Tuple[int, int]:
    """(box size, smoothing radius) for an image of ``height`` rows: LangSplat's (30, 3) scaled to the height."""
    factor = height / REFERENCE_HEIGHT
    return max(1, int(round(BOX_SIZE * factor))), int(round(SMOOTH_RADIUS * factor))


def box_filter(values: np.ndarray, size: int) -> np.ndarray:
    """Mean over a ``size`` x ``size`` window, borders reflected as ``cv2.filter2D`` does (BORDER_REFLECT_101)."""
    values = np.asarray(values, dtype=np.float32)
    if size <= 1:
        return values.copy()
    import cv2

    return cv2.filter2D(values, -1, np.full((size, size), 1.0 / size**2, dtype=np.float32))


def majority_filter(mask: np.ndarray, radius: int) -> np.ndarray:
    """Each pixel takes the majority value of its (2 radius + 1)^2 window, clipped at the image border
    (LangSplat's ``smooth``; ties keep 0, as ``np.argmax(np.bincount(...))`` does)."""
    mask = np.asarray(mask, dtype=bool)
    if radius <= 0:
        return mask.copy()
    from scipy import ndimage

    size = 2 * radius + 1
    ones = ndimage.uniform_filter(mask.astype(np.float64), size=size, mode="constant", cval=0.0)
    counts = ndimage.uniform_filter(np.ones(mask.shape), size=size, mode="constant", cval=0.0)
    return ones > 0.5 * counts + 1e-9


def relevancy_mask(relevancy_map: np.ndarray, threshold: float = MASK_THRESHOLD) -> np.ndarray:
    """LangSplat's 2D mask of a relevancy map ``[H, W]`` (module docstring)."""
    relevancy_map = np.asarray(relevancy_map, dtype=np.float32)
    box, radius = eval_windows(relevancy_map.shape[0])
    mixed = 0.5 * (box_filter(relevancy_map, box) + relevancy_map)
    normalised = (mixed - mixed.min()) / (mixed.max() - mixed.min() + 1e-9)
    stretched = np.clip(normalised * 2.0 - 1.0, 0.0, 1.0)
    return majority_filter(stretched > threshold, radius)


def localisation_point(relevancy_map: np.ndarray) -> Tuple[int, int]:
    """(x, y) of the maximum of the box-filtered relevancy map (the first in raster order)."""
    box, _ = eval_windows(np.asarray(relevancy_map).shape[0])
    filtered = box_filter(relevancy_map, box)
    y, x = np.unravel_index(int(np.argmax(filtered)), filtered.shape)
    return int(x), int(y)


def localisation_hit(relevancy_map: np.ndarray, boxes: Sequence[Sequence[float]]) -> bool:
    """Whether any pixel attaining the box-filtered maximum lies in one of the ``[x1, y1, x2, y2]`` boxes."""
    box, _ = eval_windows(np.asarray(relevancy_map).shape[0])
    filtered = box_filter(relevancy_map, box)
    ys, xs = np.nonzero(filtered == filtered.max())
    for x1, y1, x2, y2 in boxes:
        x_lo, x_hi, y_lo, y_hi = min(x1, x2), max(x1, x2), min(y1, y2), max(y1, y2)
        if bool(((xs >= x_lo) & (xs <= x_hi) & (ys >= y_lo) & (ys <= y_hi)).any()):
            return True
    return False
