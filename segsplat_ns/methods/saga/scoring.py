"""SAGA's click scoring (Sec. 3.6, Eq. 3): per-Gaussian affinity to click queries at a scale, as pure functions.

The authors' way (:func:`direct_scores`) gates every fp32 feature per click; :class:`AffinityScorer` keeps each
scale's gated features in bfloat16 and rescores near the threshold in fp32, so its selection is the fp32 one.
:func:`latency_probe` times both for ``segsplat bench-latency``. No nerfstudio imports.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Optional

import torch
import torch.nn.functional as F

from segsplat_ns.contract import LatencyProbe
from segsplat_ns.methods.common.scale_gate import ScaleGate

__all__ = ["AffinityScorer", "direct_scores", "latency_probe"]


def direct_scores(features: torch.Tensor, gate: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """The authors' way: gate every fp32 feature, normalise, cosine against the (gated, unit) queries: [N].

    Kept as the reference the fast path is measured and tested against.
    """
    gated = F.normalize(features * gate, dim=-1)
    return (gated @ queries.T).amax(dim=-1)


class AffinityScorer:
    """Per-Gaussian affinity to click queries at a scale, fast, with the fp32 answer at the threshold.

    A click reads every Gaussian's feature, so its cost is memory traffic. The gated, normalised features of a
    scale are computed once (one pass over the fp32 features) and kept in bfloat16, half the bytes, for the few
    most recent scales; a click at a kept scale is then one [N, D] x [D, K] product. bfloat16 rounding moves a
    cosine by at most ``BF16_COSINE_ERROR``; Gaussians that close to the threshold are scored again in fp32, so
    ``scores > threshold`` is the fp32 selection exactly.
    """

    BF16_COSINE_ERROR = 2.0**-6
    """Bound on |bf16 cosine - fp32 cosine| for unit vectors (8-bit mantissas: ~2^-8 per vector, with margin)."""
    BF16_FROM = 65536
    """Below this many Gaussians the features fit in the CPU caches, where fp32 is faster: they stay fp32."""

    def __init__(self, features: torch.Tensor, gate: ScaleGate, cached_scales: int = 4):
        self.features = features  # [N, D] fp32 unit vectors (after smoothing)
        self.gate = gate
        self.cached_scales = cached_scales
        self._gated: "OrderedDict[float, torch.Tensor]" = OrderedDict()

    def forget(self) -> None:
        """Drop the kept scales (the next click at any scale is a first click)."""
        self._gated.clear()

    def gate_at(self, scale: float) -> torch.Tensor:
        return self.gate(torch.tensor([float(scale)], device=self.features.device, dtype=torch.float32))[0]

    @torch.no_grad()
    def gated_features(self, scale: float) -> torch.Tensor:
        """S(s) * f_g, unit-normalised, in bfloat16 (fp32 below ``BF16_FROM`` Gaussians): [N, D], once per kept scale."""
        key = float(scale)
        if key in self._gated:
            self._gated.move_to_end(key)
            return self._gated[key]
        gated = F.normalize(self.features * self.gate_at(key), dim=-1)
        if gated.shape[0] >= self.BF16_FROM:
            gated = gated.to(torch.bfloat16)
        self._gated[key] = gated
        while len(self._gated) > self.cached_scales:
            self._gated.popitem(last=False)
        return gated

    @torch.no_grad()
    def scores(self, queries: torch.Tensor, scale: float, exact_near: Optional[float] = None) -> torch.Tensor:
        """Max cosine to the queries [K, D] (gated, unit) for every Gaussian: [N] fp32.

        With ``exact_near=t``, scores within the bf16 error of t are recomputed in fp32, so thresholding at t
        gives the fp32 selection.
        """
        gated = self.gated_features(scale)
        products = gated @ queries.to(gated.dtype).T  # [N, K]: the one pass over the features
        scores = (products.reshape(-1) if products.shape[1] == 1 else products.amax(dim=-1)).float()
        if exact_near is not None and gated.dtype == torch.bfloat16:
            low, high = float(exact_near) - self.BF16_COSINE_ERROR, float(exact_near) + self.BF16_COSINE_ERROR
            near = torch.nonzero((scores >= low) & (scores <= high)).reshape(-1)
            if near.numel() > 0:
                scores[near] = direct_scores(self.features[near], self.gate_at(scale), queries.float())
        return scores


def latency_probe(num: int, dim: int, threshold: float, generator: torch.Generator) -> LatencyProbe:
    """SAGA's click scoring on ``num`` random clustered unit features of width ``dim`` (on the generator's device):
    the authors' direct fp32 way (the reference), our first click at a scale and every later click there, and a
    text prompt's per-prompt work (relevancy of 240 cached masks, then one query at a new scale)."""
    device = generator.device
    gate = ScaleGate(dim).to(device)
    scale = 0.5
    # features in clusters (as trained ones are), so the threshold cuts through real groups
    centres = torch.randn(64, dim, generator=generator, device=device)
    labels = torch.randint(64, (num,), generator=generator, device=device)
    noise = torch.randn(num, dim, generator=generator, device=device)
    features = F.normalize(centres[labels] + 0.6 * noise, dim=-1)
    with torch.no_grad():
        gate_s = gate(torch.tensor([scale], device=device))[0]
    queries = F.normalize(features[:1] * gate_s, dim=-1)  # one click
    scorer = AffinityScorer(features, gate)

    def direct():
        return direct_scores(features, gate_s, queries) > threshold

    def new_scale():
        scorer.forget()
        return scorer.scores(queries, scale, exact_near=threshold) > threshold

    def same_scale():
        return scorer.scores(queries, scale, exact_near=threshold) > threshold

    # a text prompt after CLIP voting's text-independent preparation (clip_vote.py): the relevancy of every cached
    # mask (24 views x 10 masks, 512-d), the vote, then the winner's mask as a query at its own (new) scale
    masks = F.normalize(torch.randn(240, 512, generator=generator, device=device), dim=-1)
    text = F.normalize(torch.randn(5, 512, generator=generator, device=device), dim=-1)

    def text_prompt():
        from segsplat_ns.language.relevancy import relevancy

        best = int(relevancy(masks, text[0], text[1:]).argmax())
        scorer.forget()
        return best, scorer.scores(queries, scale, exact_near=threshold) > threshold

    with torch.no_grad():
        reference = direct()
        ours = new_scale()
        approximate = scorer.scores(queries, scale)
        refined = int(((approximate - threshold).abs() <= AffinityScorer.BF16_COSINE_ERROR).sum())
    bf16 = num >= AffinityScorer.BF16_FROM
    return LatencyProbe(
        name="SAGA: cosine of gated features > threshold",
        cases={"direct fp32": direct, "new scale": new_scale, "same scale": same_scale, "text prompt": text_prompt},
        selected=int(reference.sum()),
        reference="direct fp32",
        bytes_read={"fp32": num * dim * 4, "stored": num * dim * (2 if bf16 else 4)},
        facts={
            "stored as": "bfloat16" if bf16 else "float32",
            "mask differences vs direct": int((ours != reference).sum()),
            "rescored in fp32": refined,
        },
    )
