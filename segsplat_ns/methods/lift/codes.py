"""lift's click probe; its instance codes are the shared :mod:`segsplat_ns.methods.common.codes`."""

from __future__ import annotations

import torch
from torch import Tensor

from segsplat_ns.contract import ClickProbe, LatencyProbe
from segsplat_ns.methods.common.codes import decode, instance_codes

__all__ = ["decode", "instance_codes", "latency_probe"]


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
