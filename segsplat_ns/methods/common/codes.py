"""What a click reads from a render: each instance as a code vector, decoded at the clicked pixel (pure torch).

A click needs the instance under the pixel, i.e. FlashSplat's vote at that pixel: the instance with the largest
summed compositing weight. Rendering every instance as its own channel would cost one channel per instance on
every frame; instead each instance k gets a unit code ``c_k`` of ``dim`` floats, the codes of the Gaussians'
labels are rendered (``r(p) = sum_i w_i(p) c_{l_i}``) and decoded as ``argmax_k c_k . r(p)``. The first ``dim``
codes are orthonormal, so up to ``dim`` instances the decode *is* the vote; beyond, the others are random unit
vectors and a competitor with weight share s' can win over share s only when ``s - s' < (s + s') |c_k . c_j|``
(about ``3/sqrt(dim)`` at worst over a few hundred codes). A pixel whose best ``c_k . r(p)`` is below
``min_share`` is background.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["decode", "instance_codes"]


def instance_codes(count: int, dim: int, seed: int = 0) -> Tensor:
    """``[count, dim]`` unit codes: an orthonormal basis first, then seeded random unit vectors (deterministic)."""
    generator = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
    extra = F.normalize(torch.randn(max(count - dim, 0), dim, generator=generator, dtype=torch.float64), dim=-1)
    return torch.cat([basis.T, extra])[:count].float()


def decode(rendered: Tensor, codes: Tensor, min_share: float = 0.1) -> Tensor:
    """Instance id of each rendered code [K, dim] (``BACKGROUND`` = -1 below ``min_share``), long [K]."""
    if codes.shape[0] == 0:
        return torch.full(rendered.shape[:1], -1, dtype=torch.long, device=rendered.device)
    scores = rendered.float() @ codes.to(rendered.device).float().T
    best, ids = scores.max(-1)
    return torch.where(best >= min_share, ids, torch.full_like(ids, -1))
