"""Every Gaussian's compositing weight summed against per-pixel targets, for any linear renderer: pure torch.

Rendering is linear in the per-Gaussian colours: ``render(c)[p] = sum_i w_i(p) c_i`` with ``w_i(p) = alpha_i(p)
T_i(p)`` the compositing weight. For targets ``t [H, W, C]`` (e.g. the one-hot of a label map)
``A[i, c] = sum_p w_i(p) t[p, c]`` is the vector-Jacobian product of the render with respect to the colours,
evaluated at ``t``: one forward and one backward pass of the rasteriser that trained the splat (gsplat on CUDA,
the numba or reference rasteriser on CPU). Lifting a mask into Gaussians and voting a label map into Gaussians
both read it.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

__all__ = ["composite_weights"]


def composite_weights(render: Callable[[Tensor], Tensor], num_gaussians: int, targets: Tensor) -> Tensor:
    """``A [N, C]`` with ``A[i, c] = sum_p w_i(p) targets[p, c]``; ``render`` maps colours [N, C] to [H, W, C] and
    must be linear in them (an alpha-composite with no background)."""
    colours = torch.zeros(num_gaussians, targets.shape[-1], device=targets.device, requires_grad=True)
    with torch.enable_grad():
        out = render(colours)
        (grad,) = torch.autograd.grad(out, colours, grad_outputs=targets.to(out.dtype), allow_unused=True)
    return torch.zeros_like(colours) if grad is None else grad.detach()
