"""SAGA's training objective as pure functions (no nerfstudio imports).

Paper: Cen et al., "Segment Any 3D Gaussians" (AAAI-25), Sections 3.3-3.4, Eq. 3-12 and appendix A.1
(resampling / re-weighting). Authors' code: ``Jumpat/SegAnyGAussians`` branch ``v2``,
``train_contrastive_feature.py``.

One training step of the SAGA model, in terms of this module (``knn_indices`` / ``knn_smooth`` are in
``segsplat_ns.methods.common.knn``, the gate ``ScaleGate`` in ``segsplat_ns.methods.common.scale_gate``)::

    idx   = knn_indices(means, k=16)                          # once, geometry is frozen
    f3d   = knn_smooth(normalize(f), means, idx=idx, dropout=0.5)   # Sec. 3.3 local smoothing
    F     = render(normalize(f3d))                             # Eq. 10, [H, W, D], unnormalised
    px    = sampled pixels (covered by a mask, as the code)    # ~1000 x covered fraction
    s     = sample_training_scales(mask_scales)                # 8 random + above-max + smallest
    loss  = saga_loss(F[px], membership[px], mask_scales, mask_areas, gate, s)

Where the paper and the code differ, the choice made here is written next to the code
(search for "CHOICE").
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple, Union

import torch
from torch import Tensor

from segsplat_ns.methods.common.scale_gate import ScaleGate

__all__ = [
    "pixel_identity_vectors",
    "mask_correspondence",
    "feature_correspondence",
    "saga_contrastive_loss",
    "select_pairs",
    "feature_norm_loss",
    "sample_training_scales",
    "pair_weights",
    "saga_loss",
]


# --------------------------------------------------------------------------------------------
# Scale-aware pixel identity vectors (Eq. 6) and mask correspondence (Eq. 7)
# --------------------------------------------------------------------------------------------
def pixel_identity_vectors(membership: Tensor, mask_scales: Tensor, s: Union[float, Tensor]) -> Tensor:
    """V(s, p) of Eq. 6.

    Args:
        membership: bool ``[P, M]``, ``membership[p, i] = M_i(p)``.
        mask_scales: ``[M]`` mask scales (any order; quantile-normalised in training).
        s: a scale (float / 0-d tensor) -> returns ``[P, M]``; or a 1-d tensor ``[S]`` -> ``[S, P, M]``.

    Eq. 6, entry i of V(s, p):
      * mask scale ``s_i < s``  ->  ``M_i(p)``;
      * ``s_i >= s``            ->  ``M_i(p)`` only if no mask j with ``s <= s_j < s_i`` contains p.
    So among the masks at or above s, p is claimed only by the smallest one(s) containing it
    (a pixel's identity at scale s is its finest group that is still at least s large), and every
    mask below s keeps its plain membership ("if a pixel belongs to a specific mask at a given
    scale, it will continue to belong to that mask at larger scales").

    Paper vs code: a summary of the code reads "the GT correlation at scale s only counts masks with scale >= s".
    The v2 code (as copied in yzslab/gaussian-splatting-lightning ``internal/segany_splatting.py``)
    builds ``gt_vec[:si+1]`` (masks >= s) with the smallest-claims rule and then sets
    ``gt_vec[si+1:] = masks`` (the masks < s), which is exactly Eq. 6; the ">= s" remark only
    describes the claiming rule. Both agree with what is implemented here.

    CHOICE (ties): masks of exactly equal scale are not "smaller" than each other (the paper's
    ``s_j < s_i`` is strict), so tied smallest masks all claim p. The code breaks ties by sort order.
    """
    membership = membership.bool()
    scales = mask_scales.to(torch.float32).reshape(-1)
    s_t = torch.as_tensor(s, dtype=torch.float32, device=scales.device)
    single = s_t.dim() == 0
    s_t = s_t.reshape(-1)  # [S]

    big = scales[None, :] >= s_t[:, None]  # [S, M]  masks at or above s
    cand = membership[None, :, :] & big[:, None, :]  # [S, P, M]
    inf = torch.tensor(float("inf"), device=scales.device)
    cand_scale = torch.where(cand, scales[None, None, :], inf)  # [S, P, M]
    min_scale = cand_scale.min(dim=-1, keepdim=True).values  # [S, P, 1]
    claimed = cand & (cand_scale == min_scale)  # the smallest mask(s) >= s containing p
    v = (membership[None, :, :] & ~big[:, None, :]) | claimed
    return v[0] if single else v


def mask_correspondence(v: Tensor) -> Tensor:
    """Corr_m of Eq. 7: 1 where ``V(s, p1) . V(s, p2) > 0`` (the two pixels share a mask at s).

    ``v``: bool ``[P, M]`` -> ``[P, P]`` float, or ``[S, P, M]`` -> ``[S, P, P]``.

    The extracted paper text defines the indicator as "equal to 1 when the input greater than or
    equal to 0"; a dot product of binary vectors is always >= 0, so that reading would make every
    pair positive. The sentence before Eq. 6 ("share at least a same mask ... V(s,p1).V(s,p2) > 0")
    and the code (``gt_corr[gt_corr != 0] = 1``) both mean > 0, which is what this computes.
    """
    vf = v.to(torch.float32)
    dots = vf @ vf.transpose(-1, -2)
    return (dots > 0).to(torch.float32)


# --------------------------------------------------------------------------------------------
# Feature correspondence (Eq. 8) and the correspondence loss (Eq. 9)
# --------------------------------------------------------------------------------------------
def feature_correspondence(features: Tensor, gates: Tensor, eps: float = 1e-9) -> Tensor:
    """Corr_f of Eq. 8: cosine similarity of gated features ``S(s) * F(p)`` (Eq. 5).

    ``features`` ``[P, D]``; ``gates`` ``[D]`` -> ``[P, P]``, or ``[S, D]`` -> ``[S, P, P]``.
    """
    single = gates.dim() == 1
    g = gates.reshape(-1, gates.shape[-1])  # [S, D]
    gated = features[None, :, :] * g[:, None, :]  # [S, P, D]
    gated = gated / (gated.norm(dim=-1, keepdim=True) + eps)
    corr = gated @ gated.transpose(-1, -2)
    return corr[0] if single else corr


def _triu_flat(p: int, device) -> Tensor:
    """Flat indices of the upper off-diagonal triangle of a ``[P, P]`` matrix (the Q = P(P-1)/2 pairs)."""
    iu = torch.triu_indices(p, p, offset=1, device=device)
    return iu[0] * p + iu[1]


def _pairs(x: Tensor, flat: Tensor) -> Tensor:
    """``[..., P, P]`` -> ``[..., Q]`` values at the pairs p1 < p2."""
    return x.reshape(*x.shape[:-2], -1)[..., flat]


def _corr_loss_pairs(
    corr_f: Tensor, pos_e: Tensor, neg_e: Tensor, w: Optional[Tensor], clip_positives: bool, zero: Tensor,
    denominators: Optional[Tuple[int, int]] = None,
) -> Tensor:
    """Eq. 9 on pair lists: ``corr_f`` ``[S, Q]``; ``pos_e``/``neg_e`` bool ``[S, Q]``; ``w`` ``[Q]``.

    Sum of ``-w * corr_f`` over positive entries over the number of positive entries, plus the sum of
    ``w * max(corr_f, 0)`` over negative entries over their number; ``denominators`` replaces the two counts
    (the authors' code: S x the selected pairs). Dense masked sums (no boolean gather): cheap forward and backward
    on CPU and GPU.
    """
    loss = zero
    n_pos = int(pos_e.count_nonzero())
    n_neg = int(neg_e.count_nonzero())
    den_pos, den_neg = denominators if denominators is not None else (n_pos, n_neg)
    if n_pos > 0:
        cp = corr_f.clamp_min(0.0) if clip_positives else corr_f
        k = pos_e.to(corr_f.dtype)
        if w is not None:
            k = k * w
        loss = loss - (cp * k).sum() / den_pos
    if n_neg > 0:
        k = neg_e.to(corr_f.dtype)
        if w is not None:
            k = k * w
        loss = loss + (corr_f.clamp_min(0.0) * k).sum() / den_neg
    return loss


def saga_contrastive_loss(
    features: Tensor,
    gate_s: Tensor,
    corr_m: Tensor,
    weights: Optional[Tensor] = None,
    *,
    pos_select: Optional[Tensor] = None,
    neg_select: Optional[Tensor] = None,
    hard_mining: bool = False,
    pos_thresh: float = 0.75,
    neg_thresh: float = 0.5,
    clip_positives: bool = False,
) -> Tensor:
    """Correspondence distillation loss, Eq. 8-9, with the code's weighting and normalisation.

    Args:
        features: ``[P, D]`` rendered features F(p) (unnormalised, Eq. 10 rendering).
        gate_s: ``[D]`` gate S(s) for one scale, or ``[S, D]`` for S scales.
        corr_m: ``[P, P]`` (or ``[S, P, P]``) mask correspondence from :func:`mask_correspondence`.
        weights: ``[P, P]`` pair weights (:func:`pair_weights`), or None for 1.
        pos_select / neg_select: optional bool ``[P, P]`` (or ``[S, P, P]``) pair selections, e.g.
            from :func:`select_pairs`; only the upper off-diagonal triangle (p1 < p2) is ever used.
        hard_mining: if no selection is given, keep positives with ``corr_f < pos_thresh`` and
            negatives with ``corr_f > neg_thresh`` (per entry); otherwise all pairs.
        clip_positives: see CHOICE below.

    Per included (s, p1, p2): ``L = (1 - 2 Corr_m) * max(Corr_f, 0)`` (Eq. 9), times the pair weight.

    CHOICE (positive clip): Eq. 9 clips Corr_f at 0 for positives too (as in STEGO, Hamilton et al.
    2022). The code clips only negatives (``-w*corr`` on positives, ``w*relu(corr)`` on negatives),
    so a positive pair whose features point apart still receives a gradient. Default follows the
    code (``clip_positives=False``); ``clip_positives=True`` is Eq. 9 verbatim. For positives with
    Corr_f >= 0 and for every negative the two agree.

    CHOICE (normalisation): Eq. 12 sums over all pairs; the code takes the mean of the positive term
    and the mean of the negative term separately and adds them, which balances the (rare) positives
    against the (many) negatives. Here: mean of ``w * L`` over included positive (s, p1, p2) entries
    plus mean of ``w * L`` over included negative entries (the code's denominators also count
    selected pairs whose correspondence is of the other sign at that scale, which contribute 0;
    we do not). The mean is unweighted (``mean(w * L)``, not ``sum(w * L) / sum(w)``), as in the code.
    Each unordered pair counts once (p1 < p2; the matrices are symmetric).
    Returns a 0-d tensor (0 connected to the graph when nothing is included).
    """
    gates = gate_s.reshape(-1, gate_s.shape[-1])  # [S, D]
    P = features.shape[0]
    flat = _triu_flat(P, features.device)
    cf = _pairs(feature_correspondence(features, gates), flat)  # [S, Q]
    cm = corr_m if corr_m.dim() == 3 else corr_m.unsqueeze(0)
    pos_m = _pairs(cm > 0.5, flat).expand_as(cf)

    if pos_select is None and neg_select is None and hard_mining:
        with torch.no_grad():
            pos_e = pos_m & (cf < pos_thresh)
            neg_e = ~pos_m & (cf > neg_thresh)
    else:
        pos_e, neg_e = pos_m, ~pos_m
        if pos_select is not None:
            pos_e = pos_e & _pairs(pos_select.bool(), flat)
        if neg_select is not None:
            neg_e = neg_e & _pairs(neg_select.bool(), flat)
    w = None if weights is None else _pairs(weights.to(cf.dtype), flat)
    zero = features.sum() * 0.0 + gate_s.sum() * 0.0
    return _corr_loss_pairs(cf, pos_e, neg_e, w, clip_positives, zero)


def _select_pairs_flat(
    pos: Tensor,
    corr_f: Tensor,
    hard_mining: bool,
    resample: bool,
    pos_thresh: float,
    neg_thresh: float,
    generator: Optional[torch.Generator],
) -> Tuple[Tensor, Tensor]:
    """:func:`select_pairs` on pair lists: ``pos`` bool ``[S, Q]``, ``corr_f`` ``[S, Q]`` -> ``[Q]``, ``[Q]``."""
    S, Q = pos.shape
    if not hard_mining and not resample:
        ones = torch.ones(Q, dtype=torch.bool, device=pos.device)
        return ones, ones
    with torch.no_grad():
        n_pos = pos.sum(dim=0, dtype=torch.int16 if S < 2**15 else torch.int32)
        cons_pos = n_pos == S
        cons_neg = n_pos == 0
        incons = ~cons_pos & ~cons_neg
        pos_sel = incons.clone()
        neg_sel = incons.clone()
        if resample:
            target = float(incons.count_nonzero()) / 2.0
            rnd = torch.rand(Q, generator=generator).to(pos.device)
            n_cp = max(int(cons_pos.count_nonzero()), 1)
            n_cn = max(int(cons_neg.count_nonzero()), 1)
            pos_sel |= cons_pos & (rnd < target / n_cp)
            neg_sel |= cons_neg & (rnd < target / n_cn)
        else:
            pos_sel |= cons_pos
            neg_sel |= cons_neg
        if hard_mining:
            cf = corr_f.detach()
            pos_sel |= (pos & (cf < pos_thresh)).any(dim=0)
            neg_sel |= (~pos & (cf > neg_thresh)).any(dim=0)
    return pos_sel, neg_sel


def select_pairs(
    corr_m: Tensor,
    corr_f: Tensor,
    *,
    hard_mining: bool = True,
    resample: bool = True,
    pos_thresh: float = 0.75,
    neg_thresh: float = 0.5,
    generator: Optional[torch.Generator] = None,
) -> Tuple[Tensor, Tensor]:
    """Pixel-pair selection of the code (appendix A.1 "resampling" plus hard mining).

    Args:
        corr_m: ``[S, P, P]`` mask correspondence at the S sampled scales.
        corr_f: ``[S, P, P]`` feature correspondence (detached inside).

    Returns ``(pos_select, neg_select)``, bool ``[P, P]`` (upper off-diagonal triangle), used for
    every scale. Over the S scales a pair is *consistent positive* (positive at every scale),
    *consistent negative* (never positive) or *inconsistent* (scale-dependent). Following the code:
      * inconsistent pairs are always kept (they are what teaches the gate about scale);
      * consistent positives and consistent negatives are each subsampled to about
        ``#inconsistent / 2`` pairs (A.1, imbalance items 1-2);
      * with ``hard_mining``, positives with ``corr_f < pos_thresh`` at some scale and negatives
        with ``corr_f > neg_thresh`` at some scale are added (code: 0.75 / 0.5).
    ``hard_mining=False`` and ``resample=False``: every pair is selected.
    Note (as in the code): with no inconsistent pair, the random subsample is empty.
    """
    S, P, _ = corr_m.shape
    flat = _triu_flat(P, corr_m.device)
    ps, ns = _select_pairs_flat(
        _pairs(corr_m > 0.5, flat), _pairs(corr_f, flat), hard_mining, resample, pos_thresh, neg_thresh, generator
    )
    pos_sel = torch.zeros(P * P, dtype=torch.bool, device=corr_m.device)
    neg_sel = torch.zeros(P * P, dtype=torch.bool, device=corr_m.device)
    pos_sel[flat] = ps
    neg_sel[flat] = ns
    return pos_sel.view(P, P), neg_sel.view(P, P)


# --------------------------------------------------------------------------------------------
# Feature norm regulariser (Eq. 11)
# --------------------------------------------------------------------------------------------
def feature_norm_loss(features: Tensor, squared_of_mean: bool = False) -> Tensor:
    """Eq. 11 averaged over pixels: ``mean_p (1 - ||F(p)||)``.

    ``features``: ``[P, D]`` (or ``[..., D]``) rendered from unit per-Gaussian features (Eq. 10),
    so ``||F(p)|| <= 1`` and each term is >= 0.

    CHOICE: the paper's Eq. 11/12 is linear in the norm (summed over pixels; we average so it
    does not scale with the number of pixels). The code uses ``(1 - mean_p ||F(p)||)^2`` over the
    whole rendered map (``rfn * rendered_feature_norm_reg``, rfn = 1), whose gradient vanishes as
    the norms approach 1. Default: the paper's linear form; ``squared_of_mean=True`` gives the code's.
    """
    norms = features.norm(dim=-1)
    if squared_of_mean:
        return (1.0 - norms.mean()) ** 2
    return (1.0 - norms).mean()


# --------------------------------------------------------------------------------------------
# Scale sampling and pair weights (appendix A.1 / code)
# --------------------------------------------------------------------------------------------
def sample_training_scales(
    mask_scales_sorted: Tensor,
    num_random: int = 8,
    generator: Optional[torch.Generator] = None,
    upper: float = 1.0,
) -> Tensor:
    """The scales s used for one view's loss: ``[min(num_random, M) + 2]``.

    ``mask_scales_sorted``: the view's mask scales (quantile-normalised, in [0, 1]); any order is
    accepted (they are sorted here, descending, as in the code).

    As in the code: ``num_random`` distinct mask indices i drawn at random, plus one scale "bigger
    than the max" and the smallest mask. Each drawn index i (descending order) becomes a scale
    uniformly in ``(scale[i+1], scale[i]]``, so mask i is the smallest mask at or above s; the
    smallest mask becomes a scale in ``(0, scale_min]``.

    CHOICE (the "bigger than max" scale): the code draws it above the largest raw scale of the whole
    dataset and marks it "all masks count" explicitly; after its quantile transform it lands at
    ~1.0. Here scales are already normalised, so it is drawn uniformly in ``[max(view), upper]``
    (upper = 1.0, the normalised maximum). At any s >= the view's largest scale, Eq. 6 already
    gives V(s, p) = all of p's masks, so no special case is needed.
    Returned order: [above-max, random..., smallest].
    """
    sc = torch.sort(mask_scales_sorted.to(torch.float32).reshape(-1).cpu(), descending=True).values
    M = sc.numel()
    if M == 0:
        raise ValueError("sample_training_scales needs at least one mask")
    n = min(num_random, M)
    idx = torch.randperm(M, generator=generator)[:n]
    idx = torch.cat([idx, torch.tensor([M - 1])])
    r = torch.rand(idx.numel() + 1, generator=generator)
    lower = torch.where(idx < M - 1, sc[(idx + 1).clamp_max(M - 1)], torch.zeros(()))
    hi = sc[idx]
    s_rand = hi - (hi - lower) * r[:-1]  # in (lower, hi]
    top_lo = sc[0]
    top_hi = torch.maximum(torch.tensor(float(upper)), top_lo)
    s_top = top_lo + (top_hi - top_lo) * r[-1:]
    out = torch.cat([s_top, s_rand])
    return out.to(mask_scales_sorted.device)


def pair_weights(membership: Tensor, mask_areas: Tensor, w_min: float = 1.0, w_max: float = 10.0) -> Tensor:
    """Pair weights ``[P, P]`` in ``[w_min, w_max]``: larger for pixels of small masks (A.1, item 3).

    Definition (the code's): each pixel p gets ``a(p)`` = the mean area (pixels in the full image)
    of all masks containing p, independent of scale. A pair's raw weight is
    ``max_{q,r} a(q) a(r) / (a(p1) a(p2))`` (>= 1, the inverse product of areas), and raw weights
    are min-max rescaled to ``[1, 10]``. Pixels in no mask get the minimum weight.
    If all raw weights are equal the result is all ``w_min``.
    """
    mem = membership.to(torch.float32)
    areas = mask_areas.to(torch.float32).reshape(-1)
    count = mem.sum(dim=1)
    a = (mem @ areas) / count.clamp_min(1.0)  # [P], mean area of p's masks (0 if none)
    prod = a[:, None] * a[None, :]
    pmax = prod.max()
    covered = prod > 0
    raw = torch.where(covered, pmax / prod.clamp_min(1e-30), torch.ones_like(prod)).clamp_min(1.0)
    rmin, rmax = raw.min(), raw.max()
    if not torch.isfinite(rmax) or (rmax - rmin) <= 0:
        return torch.full_like(prod, w_min)
    return w_min + (raw - rmin) / (rmax - rmin) * (w_max - w_min)


# --------------------------------------------------------------------------------------------
# The whole per-view loss
# --------------------------------------------------------------------------------------------
def saga_loss(
    features_px: Tensor,
    membership: Tensor,
    mask_scales: Tensor,
    mask_areas: Tensor,
    gate: ScaleGate,
    scales: Tensor,
    hard_mining: bool = True,
    *,
    resample: bool = True,
    pos_thresh: float = 0.75,
    neg_thresh: float = 0.5,
    use_pair_weights: bool = True,
    clip_positives: bool = False,
    norm_weight: float = 1.0,
    norm_features: Optional[Tensor] = None,
    norm_squared_of_mean: bool = False,
    normalisation: str = "entries",
    generator: Optional[torch.Generator] = None,
    stats: Optional[Dict[str, float]] = None,
) -> Dict[str, Tensor]:
    """SAGA's loss for one view (Eq. 12 with the code's resampling, mining and weighting).

    Args:
        features_px: ``[P, D]`` rendered features at the sampled pixels (Eq. 10 rendering).
        membership: bool ``[P, M]``, which of the view's masks contain each sampled pixel.
        mask_scales: ``[M]`` quantile-normalised mask scales in [0, 1].
        mask_areas: ``[M]`` mask areas in pixels (full image).
        gate: the shared :class:`ScaleGate`.
        scales: ``[S]`` training scales (:func:`sample_training_scales`).
        norm_features: pixels for the norm regulariser (e.g. the whole rendered map ``[H*W, D]``,
            as the code does); default ``features_px``.
        stats: if a dict is given, it is filled with detached diagnostics (mean cosine of positive /
            negative entries, pair counts).
        normalisation: what each Eq. 9 sum is divided by: "entries", the (scale, pair) entries it sums (ours);
            "code", the number of scales times the selected pairs (the authors' ``.mean()`` over ``[:, Sel]``,
            whose entries of the other sign at a scale add 0 but count).

    Returns ``{"saga_contrastive": ..., "saga_feature_norm": norm_weight * ...}`` (only loss terms,
    so nerfstudio can sum the dict).
        hard_mining: the code's pair selection (:func:`select_pairs`: inconsistent pairs, resampled
            consistent pairs when ``resample``, hard positives ``corr_f < pos_thresh`` and hard
            negatives ``corr_f > neg_thresh``). ``False``: every pair at every scale, no resampling.

    Memory: two ``[S, P, P]`` matmul outputs plus a few ``[S, Q]`` pair lists, Q = P(P-1)/2
    (S=10, P=1000: 40 MB and 20 MB in float32). CPU time at that size: ~1 s per call (2 cores).
    """
    dev = features_px.device
    scales = scales.to(dev, torch.float32).reshape(-1)
    P = features_px.shape[0]
    flat = _triu_flat(P, dev)  # all work below is on the Q = P(P-1)/2 pairs p1 < p2
    with torch.no_grad():
        v = pixel_identity_vectors(membership.to(dev), mask_scales.to(dev), scales)  # [S, P, M]
        pos = _pairs(mask_correspondence(v) > 0.5, flat)  # [S, Q]
        del v
        w = _pairs(pair_weights(membership.to(dev), mask_areas.to(dev)), flat) if use_pair_weights else None
    gates = gate(scales)  # [S, D]
    cf = _pairs(feature_correspondence(features_px, gates), flat)  # [S, Q], differentiable
    pos_sel, neg_sel = _select_pairs_flat(
        pos, cf, hard_mining, resample and hard_mining, pos_thresh, neg_thresh, generator
    )
    zero = features_px.sum() * 0.0 + gates.sum() * 0.0
    if normalisation not in ("entries", "code"):
        raise ValueError(f"normalisation={normalisation!r}: choose 'entries' or 'code'")
    denominators = None
    if normalisation == "code":
        S = cf.shape[0]
        denominators = (S * int(pos_sel.count_nonzero()), S * int(neg_sel.count_nonzero()))
    l_corr = _corr_loss_pairs(cf, pos & pos_sel, ~pos & neg_sel, w, clip_positives, zero, denominators)
    nf = features_px if norm_features is None else norm_features
    l_norm = feature_norm_loss(nf, squared_of_mean=norm_squared_of_mean)

    if stats is not None:
        with torch.no_grad():
            cfd = cf.detach()
            n_p, n_n = int(pos.count_nonzero()), int((~pos).count_nonzero())
            stats["cosine_pos"] = float((cfd * pos).sum() / n_p) if n_p else float("nan")
            stats["cosine_neg"] = float((cfd * ~pos).sum() / n_n) if n_n else float("nan")
            stats["n_pos_pairs"] = float(pos_sel.count_nonzero())
            stats["n_neg_pairs"] = float(neg_sel.count_nonzero())
            stats["feature_norm"] = float(nf.detach().norm(dim=-1).mean())
    return {"saga_contrastive": l_corr, "saga_feature_norm": norm_weight * l_norm}
