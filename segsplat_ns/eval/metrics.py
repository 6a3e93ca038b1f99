"""Segmentation metrics: IoU, mIoU, pixel accuracy, boundary IoU and Hungarian-matched instance scores.

All functions take numpy arrays or torch tensors (any device; they are moved to CPU numpy).

Binary masks
    A mask is ``[H, W]`` or a batch ``[B, H, W]``. Boolean masks are used as they are; any other dtype is
    binarised with ``x > 0.5`` (so 0/1 and 0/255 masks both work). Gaussian Grouping's
    ``eval_lerf_mask.py`` binarises 8-bit PNGs with ``> 128``: pass ``png > 128`` to reproduce it exactly
    for anti-aliased masks.

    For a single pair the functions return that pair's value; for a batch they return the mean of the
    per-image values (the way NVOS / SPIn-NeRF / LERF-Mask numbers are averaged over views).

Empty masks
    IoU and boundary IoU of two empty masks are defined as 1.0 (the prediction is exactly right). The
    reference scripts compute ``0/0`` there and get NaN; we document the choice instead.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, Optional, Tuple

import numpy as np

ArrayLike = Any  # numpy array or torch tensor

__all__ = [
    "iou",
    "mean_iou",
    "accuracy",
    "boundary_iou",
    "mask_to_boundary",
    "hungarian_instance_metrics",
]


def _to_numpy(x: ArrayLike) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _as_bool(x: ArrayLike) -> np.ndarray:
    a = _to_numpy(x)
    if a.dtype == np.bool_:
        return a
    return a > 0.5


def _pair(pred: ArrayLike, gt: ArrayLike) -> Tuple[np.ndarray, np.ndarray]:
    p, g = _as_bool(pred), _as_bool(gt)
    if p.shape != g.shape:
        raise ValueError(f"pred and gt masks must have the same shape, got {p.shape} and {g.shape}")
    if p.ndim not in (2, 3):
        raise ValueError(f"masks must be [H, W] or [B, H, W], got shape {p.shape}")
    return p, g


def _iou_2d(p: np.ndarray, g: np.ndarray) -> float:
    union = np.logical_or(p, g).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(p, g).sum() / union)


def iou(pred: ArrayLike, gt: ArrayLike) -> float:
    """Intersection over union ``|P ∩ G| / |P ∪ G|`` of two binary masks.

    Both empty -> 1.0. For ``[B, H, W]`` batches: the mean of the per-image IoUs.
    """
    p, g = _pair(pred, gt)
    if p.ndim == 2:
        return _iou_2d(p, g)
    return float(np.mean([_iou_2d(p[i], g[i]) for i in range(p.shape[0])]))


def mean_iou(pairs: Iterable[Tuple[ArrayLike, ArrayLike]]) -> float:
    """Mean of :func:`iou` over ``(pred, gt)`` pairs (e.g. one pair per annotated view / prompt).

    The masks of different pairs may have different sizes. An empty list raises ``ValueError``.
    """
    values = [iou(p, g) for p, g in pairs]
    if not values:
        raise ValueError("mean_iou needs at least one (pred, gt) pair")
    return float(np.mean(values))


def accuracy(pred: ArrayLike, gt: ArrayLike) -> float:
    """Pixel accuracy: the fraction of pixels where the binary prediction equals the ground truth.

    This is NVOS's / SPIn-NeRF's "Acc" (reported as mAcc when averaged over views). For ``[B, H, W]``
    batches: the mean of the per-image accuracies.
    """
    p, g = _pair(pred, gt)
    if p.ndim == 2:
        return float((p == g).mean())
    return float(np.mean([(p[i] == g[i]).mean() for i in range(p.shape[0])]))


def _erode(mask: np.ndarray, iterations: int) -> np.ndarray:
    """Binary erosion by a 3x3 square, ``iterations`` times, with everything outside the image = 0.

    ``iterations`` repeated 3x3 erosions equal one erosion by a ``(2d+1) x (2d+1)`` square, i.e. a pixel
    survives iff every pixel within Chebyshev distance ``d`` is inside the mask *and* inside the image.
    Implemented with running minima along rows then columns (separable), so no OpenCV is needed.
    """
    d = int(iterations)
    h, w = mask.shape
    padded = np.zeros((h + 2 * d, w + 2 * d), dtype=bool)
    padded[d : d + h, d : d + w] = mask
    # rows: out[i, :] = AND of padded[i .. i+2d, :]
    rows = np.ones((h, w + 2 * d), dtype=bool)
    for k in range(2 * d + 1):
        rows &= padded[k : k + h, :]
    out = np.ones((h, w), dtype=bool)
    for k in range(2 * d + 1):
        out &= rows[:, k : k + w]
    return out


def _boundary_width(h: int, w: int, dilation_ratio: float) -> int:
    return max(1, int(round(dilation_ratio * float(np.sqrt(h**2 + w**2)))))


def mask_to_boundary(mask: ArrayLike, dilation_ratio: float = 0.02) -> np.ndarray:
    """The inner boundary band of a binary ``[H, W]`` mask (Cheng et al., "Boundary IoU", CVPR 2021).

    ``d = max(1, round(dilation_ratio * sqrt(H² + W²)))``;
    ``boundary = M AND NOT erode(M, 3x3 square, d iterations)``, with pixels outside the image counted as
    background so a mask touching the image border has a boundary there too. This is exactly what
    ``mask_to_boundary`` in Gaussian Grouping's ``script/eval_lerf_mask.py`` computes (it pads by one zero
    pixel and calls ``cv2.erode`` ``d`` times): the mask pixels within Chebyshev distance ``d`` of a
    background pixel.
    """
    m = _as_bool(mask)
    if m.ndim != 2:
        raise ValueError(f"mask_to_boundary takes one [H, W] mask, got shape {m.shape}")
    d = _boundary_width(m.shape[0], m.shape[1], dilation_ratio)
    return m & ~_erode(m, d)


def _boundary_iou_2d(p: np.ndarray, g: np.ndarray, dilation_ratio: float) -> float:
    pb = mask_to_boundary(p, dilation_ratio)
    gb = mask_to_boundary(g, dilation_ratio)
    union = np.logical_or(pb, gb).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(pb, gb).sum() / union)


def boundary_iou(pred: ArrayLike, gt: ArrayLike, dilation_ratio: float = 0.02) -> float:
    """Boundary IoU as in Gaussian Grouping's LERF-Mask evaluation (``script/eval_lerf_mask.py``).

    ``BIoU = |B(P) ∩ B(G)| / |B(P) ∪ B(G)|`` with ``B`` = :func:`mask_to_boundary` (band of width
    ``d = max(1, round(dilation_ratio * image diagonal))`` inside each mask). Note this is the variant
    used by that script and the Boundary IoU gist it cites: the boundaries are *not* further intersected
    with the dilated other mask. Both boundaries empty (both masks empty) -> 1.0 (the script gives NaN).
    For ``[B, H, W]`` batches: the mean of the per-image values.
    """
    p, g = _pair(pred, gt)
    if p.ndim == 2:
        return _boundary_iou_2d(p, g, dilation_ratio)
    return float(np.mean([_boundary_iou_2d(p[i], g[i], dilation_ratio) for i in range(p.shape[0])]))


def hungarian_instance_metrics(
    pred_labels: ArrayLike,
    gt_labels: ArrayLike,
    ignore_label: Optional[int] = 0,
    iou_threshold: float = 0.5,
    pred_ignore_label: Optional[int] = None,
) -> Dict[str, float]:
    """Instance-segmentation scores after one-to-one Hungarian matching, following Gaga's ``eval.py``.

    Args:
        pred_labels: integer instance ids, ``[H, W]`` or ``[B, H, W]`` (ids consistent across the views of a
            batch, as 3D-consistent ids are).
        gt_labels: integer ground-truth instance ids, same shape.
        ignore_label: GT id marking void pixels (e.g. 0 = unlabelled). Void pixels are removed from every
            computation, and that id is not a GT instance. ``None``: every GT id is an instance and no pixel
            is void — this is what Gaga's released ``eval.py`` does (background counts as an instance).
        iou_threshold: a matched pair is a hit when its IoU is strictly greater than this (Gaga: ``> 0.5``).
        pred_ignore_label: optional predicted id meaning "no instance" (e.g. -1); it is not counted as a
            predicted instance, its pixels still count as misses for the GT instance they cover.

    Definitions (G = GT instances present in non-void pixels, P = predicted instances present there):
        * ``IoU(g, p)`` = mean, over the views where ``g`` appears, of that view's IoU between
          ``gt == g`` and ``pred == p`` (Gaga's ``get_iou_for_label_pair``; one view -> plain IoU).
        * The ``|G| x max(|G|, |P|)`` IoU matrix (zero-padded columns) is solved with
          ``scipy.optimize.linear_sum_assignment(maximize=True)``, so every GT instance gets a match,
          possibly a padding column with IoU 0.
        * ``miou`` = mean over GT instances of the matched IoU (0 when unmatched).
        * ``precision`` = #(matches with IoU > threshold) / |P|; ``recall`` = the same count / |G|.
        * Empty cases: if both |G| and |P| are 0 all three scores are 1.0; if only one is, all are 0.0
          (Gaga would divide by zero).

    Returns:
        dict with ``miou``, ``precision``, ``recall`` (floats) and ``num_gt``, ``num_pred``, ``num_hits``.
    """
    from scipy.optimize import linear_sum_assignment

    pred = _to_numpy(pred_labels)
    gt = _to_numpy(gt_labels)
    if pred.shape != gt.shape:
        raise ValueError(f"pred_labels and gt_labels must have the same shape, got {pred.shape} and {gt.shape}")
    if pred.ndim == 2:
        pred, gt = pred[None], gt[None]
    if pred.ndim != 3:
        raise ValueError(f"labels must be [H, W] or [B, H, W], got shape {pred.shape}")
    pred = pred.astype(np.int64, copy=False)
    gt = gt.astype(np.int64, copy=False)

    valid = np.ones(gt.shape, dtype=bool) if ignore_label is None else gt != ignore_label
    gt_ids = np.unique(gt[valid])
    pred_valid = valid if pred_ignore_label is None else valid & (pred != pred_ignore_label)
    pred_ids = np.unique(pred[pred_valid])
    n_gt, n_pred = len(gt_ids), len(pred_ids)

    if n_gt == 0 or n_pred == 0:
        score = 1.0 if n_gt == n_pred else 0.0  # both empty: perfect; one empty: nothing can match
        return {"miou": score, "precision": score, "recall": score, "num_gt": n_gt, "num_pred": n_pred, "num_hits": 0}

    iou_sum = np.zeros((n_gt, n_pred), dtype=np.float64)
    views_with_gt = np.zeros(n_gt, dtype=np.int64)
    for b in range(gt.shape[0]):
        v = valid[b]
        g = np.searchsorted(gt_ids, gt[b][v])  # every valid gt id is in gt_ids
        p_raw = pred[b][v]
        p_ok = pred_valid[b][v]
        p = np.full(p_raw.shape, n_pred, dtype=np.int64)  # n_pred = "no instance" bucket
        p[p_ok] = np.searchsorted(pred_ids, p_raw[p_ok])
        inter = np.bincount(g * (n_pred + 1) + p, minlength=n_gt * (n_pred + 1)).reshape(n_gt, n_pred + 1)
        area_g = inter.sum(axis=1)
        area_p = inter.sum(axis=0)[:n_pred]
        inter = inter[:, :n_pred]
        union = area_g[:, None] + area_p[None, :] - inter
        present = area_g > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            view_iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
        iou_sum[present] += view_iou[present]
        views_with_gt += present
    iou_matrix = np.zeros((n_gt, max(n_gt, n_pred)), dtype=np.float64)
    iou_matrix[:, :n_pred] = iou_sum / np.maximum(views_with_gt, 1)[:, None]

    rows, cols = linear_sum_assignment(iou_matrix, maximize=True)
    matched = np.zeros(n_gt, dtype=np.float64)
    matched[rows] = iou_matrix[rows, cols]
    hits = int(np.sum(matched > iou_threshold))
    return {
        "miou": float(matched.mean()),
        "precision": hits / n_pred,
        "recall": hits / n_gt,
        "num_gt": n_gt,
        "num_pred": n_pred,
        "num_hits": hits,
    }
