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

from segsplat_ns.contract import ClickProbe, LatencyProbe

__all__ = ["decode", "instance_codes", "latency_probe"]


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


def latency_probe(num: int, generator: torch.Generator, levels: int = 3, dim: int = 32) -> LatencyProbe:
    """A click on ``num`` Gaussians labelled at ``levels`` levels (64 / 256 / 1024 instances, on the generator's
    device): the instance decoded from the codes rendered at the pixel (level 2), then every Gaussian whose
    label at that level is it ("scoring": the label compare alone)."""
    device = generator.device
    counts = [64 * 4**level for level in range(levels)]
    labels = torch.stack([torch.randint(count, (num,), generator=generator, device=device) for count in counts], -1)
    tables = [instance_codes(count, dim, seed=level).to(device) for level, count in enumerate(counts)]
    colors = torch.cat([tables[level][labels[:, level]] for level in range(levels)], -1)
    level = 1
    wanted = labels[:1, level]

    def answer(rendered: Tensor) -> Tensor:
        query = decode(rendered[:, level * dim : (level + 1) * dim], tables[level])
        return torch.isin(labels[:, level], query[query >= 0])

    return LatencyProbe(
        name="lift: level labels equal to the instance decoded at the click (level 2 of 3)",
        cases={"scoring": lambda: torch.isin(labels[:, level], wanted)},
        selected=int((labels[:, level] == wanted).sum()),
        bytes_read={"int64 labels": num * 8},
        click=ClickProbe(colors, answer),
    )
