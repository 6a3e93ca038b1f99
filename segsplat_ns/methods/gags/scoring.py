"""GAGS at inference: a text prompt against every Gaussian's decoded CLIP feature, stored in bfloat16.

The decoded features (``FeatureDecoder`` applied to each Gaussian's 16 floats, unit 512-d) are cached once per
model in bfloat16 (1,024 bytes per Gaussian; CPU bfloat16 matrix products are several times faster than float16
ones). A prompt is one product with the phrase and LERF's canonical phrases, then LERF's relevancy
``min_c sigmoid(T (p - n_c))`` = ``sigmoid(T (p - max_c n_c))``.

Exactness: each dot product of unit vectors read in bfloat16 (inputs and output rounded, accumulation in float32)
is within ``BF16_DOT_ERROR`` of the float32 one, so the margin ``p - max_c n_c`` is within twice that. Gaussians
whose margin lies that close to the selection's cut are decoded again in float32 and decided exactly: the
selection equals the float32 one; relevancy values elsewhere are the bfloat16 ones.
"""

from __future__ import annotations

import math
from typing import Callable, Tuple

import torch

from segsplat_ns.language.relevancy import TEMPERATURE

BF16_DOT_ERROR = 3 * 2.0**-8
"""Bound on |dot_bf16 - dot_fp32| for unit vectors: rounding of each input (2^-8 relative each, Cauchy-Schwarz)
and of the output."""
CHUNK = 262144


def text_relevancy(
    decoded: torch.Tensor,
    phrases: torch.Tensor,
    threshold: float,
    exact: Callable[[torch.Tensor], torch.Tensor],
    temperature: float = TEMPERATURE,
) -> Tuple[torch.Tensor, torch.Tensor, int]:
    """``decoded`` bfloat16 [N, D] unit features; ``phrases`` [1 + C, D] (the prompt, then the canonical phrases);
    ``exact(indices)`` -> float32 [k, D] decoded features of those Gaussians. Returns (relevancy float [N],
    selection bool [N] = relevancy > threshold, decided exactly; how many Gaussians were recomputed)."""
    weights = phrases.float().to(decoded.device).T.to(torch.bfloat16)  # [D, 1 + C]
    dots = torch.cat([(chunk @ weights).float() for chunk in torch.split(decoded, CHUNK)]) if decoded.shape[0] else (
        torch.zeros(0, phrases.shape[0], device=decoded.device))  # fmt: skip
    margin = dots[:, 0] - dots[:, 1:].amax(-1)
    cut = math.log(threshold / (1.0 - threshold)) / temperature  # relevancy > threshold <=> margin > cut
    near = ((margin - cut).abs() <= 2 * BF16_DOT_ERROR).nonzero().squeeze(1)
    if near.numel():
        exact_dots = exact(near).float() @ phrases.float().to(decoded.device).T
        margin[near] = exact_dots[:, 0] - exact_dots[:, 1:].amax(-1)
    relevancy = torch.sigmoid(temperature * margin)
    return relevancy, margin > cut, int(near.numel())
