"""GAGS's decoder D (Eq. 2): rendered feature -> (f_clip, eta), applied per pixel (the authors' 1x1 convolutions).

The paper names one MLP-based decoder; the authors' code has two, and so does this module:

* :class:`FeatureDecoder` (``CNN_decoder``): C -> 256, eight 256-wide layers with two residual sums, -> D, ReLU
  between layers, the output L2-normalised (CLIP embeddings are unit vectors);
* :class:`GranularityDecoder` (``CNN_scale_decoder``): C -> 64 -> 128 -> 64 -> 32 -> 16 -> 3, ReLU between,
  softmax: alpha = softmax(eta) (``logits`` gives eta, for a softmax over the levels present at a pixel). The authors feed it the *detached* rendered feature, so the granularity
  choice does not move the Gaussians' features; :class:`~segsplat_ns.methods.gags.model.GagsModel` does the same.

Both act on the last dimension of any ``[..., C]`` tensor, so the same decoder reads a rendered map or the
per-Gaussian features themselves (text prompts score every Gaussian by its decoded feature).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FeatureDecoder(nn.Module):
    """f_clip = D(f): [..., C] -> unit [..., out_dim] (the authors' residual 8 x 256 layout). ``heads`` > 1: one
    output layer per granularity on the shared trunk, unit [..., heads, out_dim] (``decoded-levels every``)."""

    def __init__(self, in_dim: int, out_dim: int, width: int = 256, heads: int = 1) -> None:
        super().__init__()
        self.heads = heads
        self.inp = nn.Linear(in_dim, width)
        self.hidden = nn.ModuleList(nn.Linear(width, width) for _ in range(7))
        self.out = nn.Linear(width, out_dim * heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.hidden
        x1 = F.relu(self.inp(x))
        x2 = F.relu(h[1](F.relu(h[0](x1))))
        x3 = F.relu(h[2](x1 + x2))
        x4 = F.relu(h[4](F.relu(h[3](x3))))
        x5 = F.relu(h[6](F.relu(h[5](x3 + x4))))
        out = self.out(x5)
        if self.heads > 1:
            out = out.reshape(*out.shape[:-1], self.heads, -1)
        return F.normalize(out, dim=-1)


class GranularityDecoder(nn.Module):
    """alpha = softmax(eta(f)): [..., C] -> [..., 3] (subpart, part, whole)."""

    def __init__(self, in_dim: int, widths=(64, 128, 64, 32, 16), levels: int = 3) -> None:
        super().__init__()
        dims = [in_dim, *widths, levels]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """eta: [..., 3] before the softmax."""
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(x), dim=-1)
