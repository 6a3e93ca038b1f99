"""SAGA's fast click scoring (the gate on the query side, bfloat16 f and f^2) against the authors' direct fp32
computation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from segsplat_ns.methods.common.scale_gate import ScaleGate
from segsplat_ns.methods.saga.scoring import AffinityScorer, direct_scores


def clustered_features(n: int, d: int = 32, clusters: int = 20, noise: float = 0.6, seed: int = 0) -> torch.Tensor:
    """Unit features around a few centres, so that thresholds near 0.75 select whole clusters and split others."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, d, generator=generator)
    labels = torch.randint(clusters, (n,), generator=generator)
    return F.normalize(centres[labels] + noise * torch.randn(n, d, generator=generator), dim=-1)


@pytest.fixture(scope="module")
def scorer_and_queries():
    torch.manual_seed(0)
    features = clustered_features(70_000)  # above BF16_FROM: the bfloat16 path
    gate = ScaleGate(32)
    with torch.no_grad():
        gate.linear.weight.normal_(0.0, 3.0)
        gate.linear.bias.normal_(0.0, 1.0)
    scorer = AffinityScorer(features, gate, cached_scales=2)

    def queries(scale: float, count: int = 3) -> torch.Tensor:
        return F.normalize(features[:count] * scorer.gate_at(scale), dim=-1)

    return scorer, queries


@pytest.mark.parametrize("scale", [0.05, 0.5, 0.93])
@pytest.mark.parametrize("threshold", [0.5, 0.75, 0.9])
def test_selection_equals_the_direct_fp32_selection(scorer_and_queries, scale, threshold):
    scorer, queries = scorer_and_queries
    q = queries(scale)
    direct = direct_scores(scorer.features, scorer.gate_at(scale), q) > threshold
    fast = scorer.scores(q, scale, exact_near=threshold) > threshold
    assert 100 < int(direct.sum()) < direct.numel() - 100  # the threshold cuts through the data
    assert torch.equal(fast, direct)


def test_bfloat16_error_stays_inside_the_refinement_band(scorer_and_queries):
    scorer, queries = scorer_and_queries
    q = queries(0.3, count=1)
    approximate = scorer.scores(q, 0.3)  # no fp32 refinement
    exact = direct_scores(scorer.features, scorer.gate_at(0.3), q)
    error = float((approximate - exact).abs().max())
    assert 0.0 < error < AffinityScorer.COSINE_ERROR / 2  # bf16 is not exact, and its error has margin
    band = (approximate - 0.75).abs() <= AffinityScorer.COSINE_ERROR
    assert 0 < int(band.sum()) < approximate.numel() // 20  # the fp32 re-scoring touches a few percent at most


def test_only_the_most_recent_scales_keep_their_norms(scorer_and_queries):
    scorer, _ = scorer_and_queries
    scorer.forget()
    scorer.cached_scales = 2
    first = scorer.inverse_norms(0.1)
    assert first.dtype == torch.float32 and first.shape == (scorer.features.shape[0],)
    scorer.inverse_norms(0.2)
    assert scorer.inverse_norms(0.1) is first  # still kept, and now the most recent
    scorer.inverse_norms(0.3)  # evicts 0.2, the least recent
    assert list(scorer._inverse_norms) == [0.1, 0.3]
    # no per-scale copy of the features: what a scale keeps is 4 bytes a Gaussian
    assert scorer.stored.dtype == torch.bfloat16 and scorer.stored.shape == scorer.features.shape


def test_the_error_bound_holds_where_the_gate_nearly_closes_the_feature():
    """The bound is relative to ||g f||: features whose mass sits where the gate is nearly closed, and a query on
    the few open dimensions, still score within COSINE_ERROR of fp32 (the worst case of the error analysis)."""
    generator = torch.Generator().manual_seed(3)
    gate = ScaleGate(32)
    with torch.no_grad():
        gate.linear.weight.zero_()
        gate.linear.bias.copy_(torch.where(torch.arange(32) < 4, 4.0, -9.0))  # 4 open dimensions, 28 ~closed
    features = F.normalize(torch.randn(70_000, 32, generator=generator) * torch.where(torch.arange(32) < 4, 0.05, 1.0),
                           dim=-1)
    scorer = AffinityScorer(features, gate)
    g = scorer.gate_at(0.5)
    queries = F.normalize(torch.randn(2, 32, generator=generator) * g, dim=-1)
    fast = scorer.scores(queries, 0.5)
    exact = direct_scores(features, g, queries)
    assert float((fast - exact).abs().max()) < AffinityScorer.COSINE_ERROR
    assert torch.equal(scorer.scores(queries, 0.5, exact_near=0.3) > 0.3, exact > 0.3)


def test_small_scenes_score_in_fp32():
    features = clustered_features(5_000, seed=1)
    gate = ScaleGate(32)
    scorer = AffinityScorer(features, gate)
    queries = F.normalize(features[:2] * scorer.gate_at(0.4), dim=-1)
    assert scorer.stored.dtype == torch.float32
    assert torch.allclose(scorer.scores(queries, 0.4), direct_scores(features, scorer.gate_at(0.4), queries), atol=1e-6)
