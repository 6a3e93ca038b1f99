"""Proto-SaGa's training signal (Sec. 3.1, Eq. 6-7): per-view instance label maps and per-view classifiers.

* :func:`instance_label_map`: a view's (inconsistent) instance labels M_k from its SAM mask stack — one label per
  pixel, as Gaga's ``get_raw_mask.py`` paints SAM's automatic masks into one id map;
* :func:`view_logits` (Eq. 6 before the softmax): tau times the cosine of each rendered feature with each column
  of the view's classifier w_k, over the view's own L_k classes only;
* :func:`view_cross_entropy` (Eq. 7): the cross-entropy against M_k over the labelled pixels.

Pure torch, no nerfstudio; ``tests/test_proto_saga.py`` checks them by hand.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

LabelMasks = Literal["whole", "finest"]

MIN_VISIBLE = 0.1
"""Gaga (``get_raw_mask.py``): a painted mask keeps its label only if more than this fraction of it stays visible."""


def instance_label_map(masks: torch.Tensor, level: LabelMasks = "whole", max_labels: int = 255,
                       min_visible: float = MIN_VISIBLE) -> torch.Tensor:  # fmt: skip
    """M_k: long [H, W], labels 0..L_k-1 by decreasing visible area, -1 where no mask is left.

    ``masks`` is the view's bool [M, H, W] stack (masks of every granularity, any order). Every mask is painted
    into one map, as Gaga's ``get_raw_mask.py`` paints SAM's automatic masks (in order of SAM's predicted IoU,
    which the mask cache does not keep); here the order is by area:

    * "whole": increasing area, so each pixel takes the largest mask covering it (whole objects; a part stays
      only where it sticks out of its object);
    * "finest": decreasing area, so each pixel takes the smallest mask covering it (parts).

    A mask with at most ``min_visible`` of its pixels left visible loses its label (Gaga's rule: a part inside
    its object, a sliver of a jittered part); beyond ``max_labels`` the smallest visible labels are dropped (the
    view's classifier has that many classes).
    """
    if level not in ("whole", "finest"):
        raise ValueError(f"label level must be 'whole' or 'finest', got {level!r}")
    masks = torch.as_tensor(masks).bool().cpu()
    m, h, w = masks.shape
    out = torch.full((h, w), -1, dtype=torch.long)
    if m == 0:
        return out
    area = masks.reshape(m, -1).sum(1)
    sign = 1 if level == "whole" else -1
    order = sorted(range(m), key=lambda i: (sign * int(area[i]), i))
    painted = torch.full((h, w), -1, dtype=torch.long)
    for i in order:
        painted[masks[i]] = i
    visible = torch.bincount(painted[painted >= 0], minlength=m)
    kept = [i for i in order if int(area[i]) > 0 and int(visible[i]) > min_visible * int(area[i])]
    kept = sorted(kept, key=lambda i: (-int(visible[i]), i))[:max_labels]
    for label, i in enumerate(kept):
        out[painted == i] = label
    return out


def view_logits(features: torch.Tensor, weights: torch.Tensor, num_classes: int, tau: float) -> torch.Tensor:
    """Eq. 6 inside the softmax: ``tau * w_k^T F / (|w_k| |F|)`` for features [P, D] and the view's classifier
    weights [L_max, D] (rows beyond ``num_classes`` = L_k are not the view's classes): [P, L_k]."""
    w = F.normalize(weights[:num_classes], dim=-1)
    return tau * F.normalize(features, dim=-1) @ w.T


def view_cross_entropy(features: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, num_classes: int,
                       tau: float) -> torch.Tensor:  # fmt: skip
    """Eq. 7, averaged over the labelled pixels: features [P, D], labels [P] (-1: no mask, not supervised)."""
    labelled = labels >= 0
    if num_classes == 0 or not bool(labelled.any()):
        return features.sum() * 0.0  # keeps the graph (and the step) valid for a view without masks
    logits = view_logits(features[labelled], weights, num_classes, tau)
    return F.cross_entropy(logits, labels[labelled])


def gaussian_probabilities(features: torch.Tensor, weights: torch.Tensor, num_classes: int, tau: float) -> torch.Tensor:
    """Eq. 14: every Gaussian's softmax over view k's classes from its own embedding f_i: [N, L_k]."""
    return torch.softmax(view_logits(features, weights, num_classes, tau), dim=-1)
