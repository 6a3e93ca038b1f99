"""Labels from compositing weights (FlashSplat's closed-form assignment): pure torch.

FlashSplat (Shen et al., ECCV 2024) writes a rendered mask as a linear function of per-Gaussian labels, so the
integer program "labels that best reproduce the 2D masks" is solved per Gaussian by a weighted vote: label i with
the class e maximising ``A_i^e = sum over views and pixels of class e of alpha_i T_i``. Its background bias makes the
vote robust to noisy masks: the shares are normalised, ``A^e / sum_e A^e``, and the background's gets a bias
``gamma`` before the argmax (gamma > 0: a Gaussian joins an object only with a clear majority).

- :func:`view_labels`: the vote inside one view (its masks plus "no mask"), the input of the association;
- :func:`instance_labels`: the vote over all views once the views' masks are associated into instances.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["BACKGROUND", "UNSEEN", "instance_labels", "view_labels"]

BACKGROUND = -1
"""Label of a Gaussian whose largest share is the background ("no mask")."""
UNSEEN = -2
"""Label of a Gaussian with no weight in the view (per-view labels only)."""


def _vote(rows: Tensor, cols: Tensor, values: Tensor, total: Tensor, background_bias: float,
          min_total: float) -> Tensor:  # fmt: skip
    """argmax over classes (``cols``) and the background (``total`` minus the classes' sum), per Gaussian."""
    n = total.shape[0]
    class_sum = torch.zeros(n, dtype=values.dtype, device=values.device).index_add_(0, rows, values)
    best = torch.zeros(n, dtype=values.dtype, device=values.device).scatter_reduce_(0, rows, values, "amax")
    is_best = values >= best[rows]
    big = torch.iinfo(torch.long).max
    label = torch.full((n,), big, dtype=torch.long, device=values.device)
    label.scatter_reduce_(0, rows[is_best], cols[is_best].long(), "amin")  # ties: the lower class
    background = (total.to(values.dtype) - class_sum).clamp_min(0)
    scale = total.to(values.dtype).clamp_min(1e-12)
    wins = (best > 0) & (best / scale > background / scale + background_bias)
    label = torch.where(wins, label, torch.full_like(label, BACKGROUND))
    return torch.where(total > min_total, label, torch.full_like(label, UNSEEN))


def view_labels(rows: Tensor, cols: Tensor, values: Tensor, total: Tensor, min_total: float = 1e-3) -> Tensor:
    """Each Gaussian's mask in one view, long [N]: the mask with the largest weight if it beats the weight on
    pixels of no mask, else ``BACKGROUND``; ``UNSEEN`` when its total weight in the view is at most ``min_total``
    (a hundredth of a pixel by default). ``rows``/``cols``/``values``: the view's sparse weights at one level."""
    return _vote(rows, cols, values, total, 0.0, min_total)


def instance_labels(rows: Tensor, instances: Tensor, values: Tensor, total: Tensor, num_instances: int,
                    background_bias: float = 0.0) -> Tensor:  # fmt: skip
    """FlashSplat's vote over every view: long [N], an instance id or ``BACKGROUND`` (also for unseen Gaussians).

    ``rows``/``values``: every view's sparse weights at one level, ``instances`` each entry's instance (its mask's,
    after the association; entries of the same Gaussian and instance are summed); ``total`` [N]: every Gaussian's
    weight summed over the views (so the background share is what no mask of any view covers)."""
    n = total.shape[0]
    if rows.numel() == 0:
        return torch.full((n,), BACKGROUND, dtype=torch.long, device=total.device)
    key = rows.long() * num_instances + instances.long()
    unique, inverse = torch.unique(key, return_inverse=True)
    summed = torch.zeros(unique.shape[0], dtype=torch.float64, device=values.device).index_add_(
        0, inverse, values.double()
    )
    label = _vote(unique // num_instances, unique % num_instances, summed, total.double(), background_bias, 0.0)
    return torch.where(label == UNSEEN, torch.full_like(label, BACKGROUND), label)
