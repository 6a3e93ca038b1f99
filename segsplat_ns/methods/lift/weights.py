"""The Gaussian x mask compositing-weight matrix every lifting method reads: pure torch (the renderer is passed in).

Rendering is linear in the per-Gaussian colours: ``render(c)[p] = sum_i w_i(p) c_i`` with ``w_i(p) = alpha_i(p)
T_i(p)`` the compositing weight (FlashSplat's ``alpha_i T_i``, "a constant of the scene"). So for targets
``t [H, W, C]`` - here the one-hot of a mask-index map - ``A[i, c] = sum_p w_i(p) t[p, c]`` is the vector-Jacobian
product of the render with respect to the colours, evaluated at ``t``: one forward and one backward pass of the
very rasteriser that trained the splat (gsplat on CUDA, the numba or reference rasteriser on CPU), with its alpha
threshold and early stop, and every Gaussian counted (no top-K cut per pixel). FlashSplat and Occam's LGS
accumulate the same sums in a modified CUDA forward kernel instead.

Channel 0 is all ones: ``A[i, 0] = sum_p w_i(p)``, the Gaussian's total weight in the view (visibility, the
background share, the confidence). Channels are processed ``chunk`` at a time, so the dense block is N x chunk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, List, Tuple

import torch
from torch import Tensor

from segsplat_ns.methods.common.composite import composite_weights

__all__ = ["LevelEntries", "LevelWeights", "composite_weights", "index_map_weights"]


@dataclass
class LevelWeights:
    """One view's weights at one level, sparse: Gaussian ``rows``, mask ``cols`` (indices into the view's masks)
    and ``values`` (entries at or below ``min_weight`` are dropped)."""

    rows: Tensor
    cols: Tensor
    values: Tensor


def index_map_weights(
    render: Callable[[Tensor], Tensor],
    num_gaussians: int,
    index_maps: Tensor,
    num_masks: int,
    chunk: int = 64,
    min_weight: float = 1e-6,
) -> Tuple[Tensor, List[LevelWeights]]:
    """One view: ``(total [N], [LevelWeights per map])`` for index maps long [L, H, W] (-1: no mask at that pixel;
    else an index < ``num_masks``). ``total`` is every Gaussian's weight summed over the image."""
    levels, height, width = index_maps.shape
    device = index_maps.device
    flat = index_maps.reshape(levels, -1)
    channels = 1 + levels * num_masks  # 0: ones; then level l's mask m at 1 + l * M + m
    total = torch.zeros(num_gaussians, device=device)
    parts: List[List[Tuple[Tensor, Tensor, Tensor]]] = [[] for _ in range(levels)]
    for start in range(0, channels, chunk):
        stop = min(start + chunk, channels)
        targets = torch.zeros(height * width, stop - start, device=device)
        if start == 0:
            targets[:, 0] = 1.0
        for level in range(levels):
            channel = torch.where(
                flat[level] >= 0, 1 + level * num_masks + flat[level], torch.full_like(flat[level], -1)
            )
            inside = (channel >= start) & (channel < stop)
            pixels = inside.nonzero().squeeze(1)
            targets[pixels, channel[pixels] - start] = 1.0
        weights = composite_weights(render, num_gaussians, targets.reshape(height, width, -1))
        if start == 0:
            total = weights[:, 0].clone()
        rows, cols = (weights > min_weight).nonzero(as_tuple=True)
        channel = cols + start
        keep = channel > 0
        rows, channel = rows[keep], channel[keep]
        values = weights[rows, channel - start]
        level_of = (channel - 1) // max(num_masks, 1)
        for level in range(levels):
            here = level_of == level
            parts[level].append((rows[here], channel[here] - 1 - level * num_masks, values[here]))
    out = []
    for level in range(levels):
        rows, cols, values = (torch.cat([p[k] for p in parts[level]]) for k in range(3))
        out.append(LevelWeights(rows, cols, values))
    return total, out


@dataclass
class LevelEntries:
    """One level's weights over every view so far, with mask columns made global (view 0's masks first)."""

    parts: List[Tuple[Tensor, Tensor, Tensor]] = field(default_factory=list)
    columns: int = 0
    """Masks (columns) added so far: the next view's masks start here."""

    def add(self, weights: LevelWeights, num_masks: int) -> None:
        """Append one view's weights (kept on the CPU) whose masks are its ``num_masks`` columns."""
        self.parts.append((weights.rows.cpu(), weights.cols.cpu() + self.columns, weights.values.cpu()))
        self.columns += num_masks

    def concatenated(self) -> Tuple[Tensor, Tensor, Tensor]:
        """``(rows, cols, values)`` of every view."""
        if not self.parts:
            empty = torch.zeros(0, dtype=torch.long)
            return empty, empty, torch.zeros(0)
        return tuple(torch.cat([part[k] for part in self.parts]) for k in range(3))  # type: ignore[return-value]
