"""A learnt scale gate S(s) = sigmoid(Linear(1, D)): a soft per-channel gate for a scale in [0, 1].

Shared by methods that condition per-Gaussian features on a (quantile-normalised) scale. Pure torch.
"""

from __future__ import annotations

from typing import Union

import torch
from torch import Tensor, nn

__all__ = ["ScaleGate"]


class ScaleGate(nn.Module):
    """S(s) = sigmoid(W s + b): a soft gate in [0, 1]^D for a (quantile-normalised) scale s in [0, 1].

    ``forward(s)`` accepts a float or a tensor of any shape ``[...]`` and returns ``[..., D]``.
    """

    def __init__(self, feature_dim: int = 32):
        super().__init__()
        self.feature_dim = feature_dim
        self.linear = nn.Linear(1, feature_dim, bias=True)

    def forward(self, s: Union[float, Tensor]) -> Tensor:
        if not torch.is_tensor(s):
            s = torch.tensor(float(s), device=self.linear.weight.device)
        s = s.to(dtype=self.linear.weight.dtype, device=self.linear.weight.device)
        return torch.sigmoid(self.linear(s.unsqueeze(-1)))
