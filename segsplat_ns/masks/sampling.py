"""Which pixels of a training view a pairwise loss looks at.

Uniform sampling gives a mask a share of the samples proportional to its area, so a part covering 0.5% of the
image gets ~2 of 512 pixels and its pairs are rare. Mask-balanced sampling (Binary-Gaussian, Sec. 3.5) draws
part of the pixels from masks chosen uniformly, whatever their size.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def mask_balanced_pixels(
    masks: Tensor, num_random: int, num_mask_pixels: int, num_masks: int, generator: Optional[torch.Generator] = None,
    covered_only: bool = False,
) -> Tensor:
    """Mask-balanced sampling (Sec. 3.5): ``num_random`` uniform pixels plus ``num_mask_pixels`` pixels split
    evenly over up to ``num_masks`` masks drawn at random (with replacement inside each mask). Flat ids [P].

    ``covered_only``: the uniform pixels that no mask covers are dropped after the draw (the SAGA and
    Binary-Gaussian authors' code: a Bernoulli draw of ~``num_random`` pixels, then ``& ~non_mask_region``), so
    about ``num_random`` times the covered fraction remain; otherwise an uncovered pixel is a negative of every
    other pixel at every scale."""
    m, h, w = masks.shape
    device = masks.device
    random_ids = torch.randperm(h * w, device=device, generator=generator)[: min(num_random, h * w)]
    flat = masks.reshape(m, h * w)
    if covered_only:
        random_ids = random_ids[flat.any(0)[random_ids]]
    nonempty = torch.nonzero(flat.any(-1)).reshape(-1)
    if nonempty.numel() == 0 or num_mask_pixels <= 0 or num_masks <= 0:
        return random_ids
    chosen = nonempty[torch.randperm(nonempty.numel(), device=device, generator=generator)[:num_masks]]
    per_mask = max(1, num_mask_pixels // chosen.numel())
    picked = [random_ids]
    for index in chosen.tolist():
        inside = torch.nonzero(flat[index]).reshape(-1)
        picked.append(inside[torch.randint(inside.numel(), (per_mask,), device=device, generator=generator)])
    return torch.cat(picked)
