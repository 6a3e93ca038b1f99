"""SAGA's click scoring (Sec. 3.6, Eq. 3): per-Gaussian affinity to click queries at a scale, as pure functions.

The authors' way (:func:`direct_scores`) gates every fp32 feature per click; :class:`AffinityScorer` moves the
gate to the query side, so any scale is answered from the same stored features (bfloat16) and every decision at
the threshold is the fp32 one. :func:`latency_probe` times both for ``segsplat bench-latency``. No nerfstudio
imports.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Optional

import torch
import torch.nn.functional as F

from segsplat_ns.contract import ClickProbe, LatencyProbe
from segsplat_ns.methods.common.scale_gate import ScaleGate

__all__ = ["AffinityScorer", "direct_scores", "latency_probe"]


def direct_scores(features: torch.Tensor, gate: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """The authors' way: gate every fp32 feature, normalise, cosine against the (gated, unit) queries: [N].

    Kept as the reference the fast path is measured and tested against.
    """
    gated = F.normalize(features * gate, dim=-1)
    return (gated @ queries.T).amax(dim=-1)


class AffinityScorer:
    """Per-Gaussian affinity to click queries at any scale, fast, with the fp32 answer at the threshold.

    With g = S(s) and a gated unit query q, the score is cos(g f, q) = f . (g q) / ||g f|| and
    ||g f||^2 = (f * f) . (g * g). So the stored f and f^2 (bfloat16 from ``BF16_FROM`` Gaussians: half the bytes)
    answer every scale with matrix-vector products and no per-scale copy of the features: a new scale is two
    products (the numerator and the norms), a repeated one is one product and the kept norms (``cached_scales``
    of them, 4 bytes a Gaussian each). Gaussians whose score lies within ``COSINE_ERROR`` of the threshold are
    scored again in fp32 by :func:`direct_scores`, so ``scores > threshold`` is the fp32 selection exactly.
    """

    COSINE_ERROR = 2.0**-5
    """Bound on |fast cosine - fp32 cosine|. bfloat16 rounds with relative error u = 2^-8: f, g q and the product
    each once (numerator off by <= 3u ||g f||, by Cauchy-Schwarz with ||q|| = 1), f^2, g^2 and their product each
    once (||g f|| off by <= 1.5u relative): |error| <= 3u + 1.5u |cos| + O(u^2) = 4.5u ~ 0.018; 2^-5 keeps margin."""
    BF16_FROM = 65536
    """Below this many Gaussians the features fit in the CPU caches, where fp32 is faster: they stay fp32."""

    def __init__(self, features: torch.Tensor, gate: ScaleGate, cached_scales: int = 8):
        self.features = features  # [N, D] fp32 unit vectors (after smoothing)
        self.gate = gate
        self.cached_scales = cached_scales
        dtype = torch.bfloat16 if features.shape[0] >= self.BF16_FROM else torch.float32
        self.stored = features.to(dtype)
        self.squares = features.square().to(dtype)
        self._inverse_norms: "OrderedDict[float, torch.Tensor]" = OrderedDict()
        # buffers of dropped norms, reused: a fresh 4 MB buffer per new scale costs page faults comparable to the
        # product itself at 1M Gaussians (measured: 19.3 -> 16.4 ms for a new scale with glibc's mmap turned off)
        self._spare: list = []
        self._squared: Optional[torch.Tensor] = None

    def forget(self) -> None:
        """Drop the kept norms (the next click at any scale is a first click)."""
        self._spare.extend(self._inverse_norms.values())
        self._inverse_norms.clear()

    def gate_at(self, scale: float) -> torch.Tensor:
        return self.gate(torch.tensor([float(scale)], device=self.features.device, dtype=torch.float32))[0]

    @torch.no_grad()
    def inverse_norms(self, scale: float) -> torch.Tensor:
        """1 / ||S(s) f_g|| (F.normalize's floor 1e-12) for every Gaussian: [N] fp32, kept for recent scales."""
        key = float(scale)
        if key in self._inverse_norms:
            self._inverse_norms.move_to_end(key)
            return self._inverse_norms[key]
        g2 = self.gate_at(key).square().to(self.squares.dtype)
        if self._squared is None:
            self._squared = self.squares.new_empty(self.squares.shape[0])
        torch.mv(self.squares, g2, out=self._squared)
        inverse = self._spare.pop() if self._spare else self.features.new_empty(self.features.shape[0])
        inverse.copy_(self._squared).clamp_min_(1e-24).rsqrt_()
        self._inverse_norms[key] = inverse
        while len(self._inverse_norms) > self.cached_scales:
            self._spare.append(self._inverse_norms.popitem(last=False)[1])
        return inverse

    @torch.no_grad()
    def scores(self, queries: torch.Tensor, scale: float, exact_near: Optional[float] = None) -> torch.Tensor:
        """Max cosine to the queries [K, D] (gated, unit) for every Gaussian: [N] fp32.

        With ``exact_near=t``, scores within ``COSINE_ERROR`` of t are recomputed in fp32, so thresholding at t
        gives the fp32 selection.
        """
        gate = self.gate_at(scale)
        inverse = self.inverse_norms(scale)
        weights = (queries.float() * gate).to(self.stored.dtype)
        if weights.shape[0] == 1:  # one click: a matrix-vector product (faster than the [N, D] x [D, 1] product)
            numerators = self.stored @ weights[0]
        else:
            numerators = (self.stored @ weights.T).amax(dim=-1)  # [N, K]: one pass over f
        scores = inverse * numerators  # fp32; the norm is positive, so the max commutes with it
        if exact_near is not None and self.stored.dtype == torch.bfloat16:
            low, high = float(exact_near) - self.COSINE_ERROR, float(exact_near) + self.COSINE_ERROR
            near = torch.nonzero((scores >= low) & (scores <= high)).reshape(-1)
            if near.numel() > 0:
                scores[near] = direct_scores(self.features[near], gate, queries.float())
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
        refined = int(((approximate - threshold).abs() <= AffinityScorer.COSINE_ERROR).sum())
    bf16 = num >= AffinityScorer.BF16_FROM

    def answer(rendered: torch.Tensor) -> torch.Tensor:  # prompt_query, then a click at the kept scale
        clicked = F.normalize(rendered.float() * gate_s, dim=-1)
        return scorer.scores(clicked, scale, exact_near=threshold) > threshold

    return LatencyProbe(
        name="SAGA: cosine of gated features > threshold",
        cases={"direct fp32": direct, "new scale": new_scale, "same scale": same_scale, "text prompt": text_prompt},
        selected=int(reference.sum()),
        reference="direct fp32",
        bytes_read={"fp32": num * dim * 4, "stored": num * (dim * (2 if bf16 else 4) + 4)},
        facts={
            "stored as": "bfloat16" if bf16 else "float32",
            "mask differences vs direct": int((ours != reference).sum()),
            "rescored in fp32": refined,
        },
        click=ClickProbe(features, answer),
    )
