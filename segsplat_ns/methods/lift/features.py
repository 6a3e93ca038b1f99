"""Per-Gaussian CLIP features as the weighted mean of the masks' embeddings (Occam's LGS): pure torch.

Occam's LGS (Cheng et al., BMVC 2025) lifts each view's per-mask CLIP embeddings in one pass: a Gaussian's feature is
the mean of the embeddings of the masks it is rendered into, weighted by its compositing weight there,
``f_i = sum_{v,p} w_i(p) e(p) / sum_{v,p} w_i(p)`` over the pixels p that have a mask at the level. Stored unit
length in float16 (relevancy only reads directions); a Gaussian in no mask gets zeros.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["weighted_mean_features"]


def weighted_mean_features(rows: Tensor, cols: Tensor, values: Tensor, table: Tensor, num_gaussians: int,
                           chunk: int = 1 << 16) -> Tensor:  # fmt: skip
    """``[N, D]`` unit float32: per Gaussian, the ``values``-weighted mean of ``table[cols]`` (the masks' embeddings
    [F, D]) over its entries (``rows`` [E] says whose entry each is); zeros for a Gaussian with no entry."""
    out = torch.zeros(num_gaussians, table.shape[1], dtype=torch.float32, device=table.device)
    for start in range(0, rows.shape[0], chunk):
        stop = start + chunk
        embeddings = table[cols[start:stop].long()].float()
        out.index_add_(0, rows[start:stop].long(), values[start:stop, None].float() * embeddings)
    return F.normalize(out, dim=-1)  # the weight sum only scales the mean; zeros stay zeros
