"""SAGA — Segment Any 3D GAussians (Cen et al., AAAI-25): what the paper adds to the shared base.

- a D-dim affinity feature f_g per Gaussian, rendered as unit vectors (Eq. 10) through the frozen geometry;
- a scale gate S(s) = sigmoid(Linear(1, D)) applied to rendered features (Eq. 5) and, at inference, to the
  per-Gaussian features (Eq. 3);
- scale-aware contrastive training on SAM mask pairs (Eq. 6-9), feature-norm regulariser (Eq. 11), local kNN
  feature smoothing (Sec. 3.3), and the pair resampling/re-weighting of Sec. 3.4 (see :mod:`.loss`);
- inference: click + scale -> cosine similarity of gated features > threshold (:mod:`.scoring`); HDBSCAN
  decomposition; text prompts by CLIP voting over the decomposition's segments (supplement A.3,
  :mod:`.clip_vote`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Literal, Optional, Type

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn import Parameter

from segsplat_ns.base_model import SegSplatModel, SegSplatModelConfig
from segsplat_ns.contract import LanguageViews, LatencyProbe, TextQuery, TextScores
from segsplat_ns.masks.sampling import mask_balanced_pixels
from segsplat_ns.methods.common.knn import knn_indices, knn_smooth
from segsplat_ns.methods.common.memo import InferenceMemo
from segsplat_ns.methods.common.scale_gate import ScaleGate
from segsplat_ns.methods.saga import clip_vote, scoring
from segsplat_ns.methods.saga.loss import saga_loss, sample_training_scales
from segsplat_ns.methods.saga.scoring import AffinityScorer

__all__ = ["SagaModel", "SagaModelConfig"]


@dataclass
class SagaModelConfig(SegSplatModelConfig):
    """SAGA's affinity features on top of splatfacto."""

    _target: Type = field(default_factory=lambda: SagaModel)
    feature_dim: int = 32
    """D: width of the Gaussian affinity feature f_g (paper: 32)."""
    num_sampled_pixels: int = 1000
    """|delta(I)|: pixels drawn per image for the pairwise loss (authors' scripts: 1000 rays)."""
    uncovered_pixels: Literal["drop", "keep"] = "drop"
    """Drawn pixels no mask covers: dropped (authors' code) or kept as negatives of every pixel."""
    mask_balanced_fraction: Optional[float] = None
    """Share of |delta(I)| drawn from randomly chosen masks (Binary-Gaussian's sampling; preset: paper 0, segsplat 0.5)."""
    num_balanced_masks: int = 16
    """Masks drawn per image for the mask-balanced pixels; those pixels are split evenly over them."""
    num_random_scales: int = 8
    """Random scales s per step, plus one above the largest mask and the smallest (authors' code)."""
    smooth_k: int = 16
    """K of the local feature smoothing f_g <- mean of KNN(g) (Sec. 3.3; code: 16)."""
    smooth_dropout: float = 0.5
    """Fraction of the K neighbours dropped at random during training (code: 0.5)."""
    norm_loss_weight: float = 1.0
    """Weight of the feature-norm regulariser L_norm = 1 - ||F(p)|| (Eq. 11; code rfn=1.0)."""
    norm_loss_form: Optional[Literal["paper", "code", "covered"]] = None
    """Eq. 11: mean 1-||F|| over the map ("paper"), (1-mean||F||)^2 ("code"), or over covered pixels (preset)."""
    clip_positives: Optional[bool] = None
    """Eq. 9's max(Corr_f, 0) on positive pairs too (paper; the code clips negatives only; preset)."""
    loss_normalisation: Optional[Literal["code", "entries"]] = None
    """Eq. 12's sums over S x selected pairs ("code") or over the entries they sum ("entries"; preset)."""
    feature_init_std: Optional[float] = None
    """Std of the initial f_g (authors' code 0.01; preset)."""
    decompose_fraction: Optional[float] = None
    """Share of Gaussians HDBSCAN clusters (paper 1%, code 2%; preset)."""
    decompose_min_samples: Optional[int] = None
    """Fewest Gaussians HDBSCAN clusters, whatever the share (paper 0; preset)."""
    positive_hard_threshold: float = 0.75
    """Hard mining: positive pairs count only while Corr_f < this (code: 0.75)."""
    negative_hard_threshold: float = 0.5
    """Hard mining: negative pairs count only while Corr_f > this (code: 0.5)."""
    text_min_iou: float = 0.5
    """Text prompts: masks whose 3D selections overlap this much (IoU, average linkage) are one segment."""
    text_threshold: float = 0.85
    """Text prompts: cosine affinity to the voted segment's query a Gaussian needs (authors' notebook: 0.85)."""
    text_query: Literal["best-mask", "majority"] = "best-mask"
    """Text prompts: the winner's most relevant mask is the query (notebook), or majority of its views' voted masks (ours)."""

    presets: ClassVar[Dict[str, Dict[str, Any]]] = {
        # the paper, and the authors' code where the paper is silent (docs/saga.md, "Presets")
        "paper": {"mask_balanced_fraction": 0.0, "norm_loss_form": "paper", "clip_positives": True,
                  "loss_normalisation": "code", "feature_init_std": 0.01, "decompose_fraction": 0.01,
                  "decompose_min_samples": 0},
        "segsplat": {"mask_balanced_fraction": 0.5, "norm_loss_form": "covered", "clip_positives": False,
                     "loss_normalisation": "entries", "feature_init_std": 0.1, "decompose_fraction": 0.02,
                     "decompose_min_samples": 500},
    }


class SagaModel(SegSplatModel):
    config: SagaModelConfig
    feature_key = "affinity_features"
    text_support = "CLIP voting over the training views' masks (SAGA supplement A.3)"
    inference_variants = {"text-query majority": {"text_query": "majority"}}

    def populate_method_modules(self) -> None:
        self.scale_gate = ScaleGate(self.config.feature_dim)
        self._neighbours: Optional[torch.Tensor] = None
        self._memo = InferenceMemo()

    def method_param_groups(self) -> Dict[str, List[Parameter]]:
        return {"scale_gate": list(self.scale_gate.parameters())}

    def initial_features(self, num_points: int) -> torch.Tensor:
        return torch.randn(num_points, self.config.feature_dim) * self.config.feature_init_std

    # ---- features -----------------------------------------------------------------------------------
    def neighbours(self) -> torch.Tensor:
        """K nearest Gaussians of each Gaussian; computed once, since the geometry is frozen in stage two."""
        count = self.num_points
        if self._neighbours is None or self._neighbours.shape[0] != count:
            self._neighbours = knn_indices(self.means.detach(), self.config.smooth_k).to(self.device)
            self._memo.clear()
        return self._neighbours

    def smoothed_features(self, training: bool) -> torch.Tensor:
        """Unit-norm affinity features after local smoothing (random neighbour dropout while training)."""
        # unit vectors before smoothing (every neighbour counts equally) and after (Eq. 10 renders unit vectors)
        features = F.normalize(self.gauss_params[self.feature_key], dim=-1)
        dropout = self.config.smooth_dropout if training else 0.0
        smoothed = knn_smooth(features, self.means, k=self.config.smooth_k, dropout=dropout, idx=self.neighbours())
        return F.normalize(smoothed, dim=-1)

    def feature_colors(self) -> torch.Tensor:
        if self.training:
            return self.smoothed_features(training=True)
        return self._cached("features", lambda: self.smoothed_features(training=False))

    def _cached(self, key: str, compute):
        # inference reuses the smoothed features until the parameters change (viewer during training)
        return self._memo.get((self.gauss_params[self.feature_key]._version, self.num_points), key, compute)

    def load_state_dict(self, dict, **kwargs):  # type: ignore[override]
        super().load_state_dict(dict, **kwargs)
        self._neighbours = None
        self._memo.clear()

    # ---- training -----------------------------------------------------------------------------------
    def feature_loss_dict(self, outputs: Dict[str, torch.Tensor], batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        features = outputs["features"]  # [H, W, D]
        height, width = features.shape[:2]
        masks = batch["masks"].to(self.device)  # [M, H, W] bool
        mask_scales = batch["mask_scales"].to(self.device)  # [M], quantile-normalised to [0, 1]
        if masks.shape[1:] != (height, width):
            raise ValueError(f"masks are {tuple(masks.shape[1:])} but the feature map is {(height, width)}")
        num_pixels = min(self.config.num_sampled_pixels, height * width)
        num_balanced = min(round(self.config.mask_balanced_fraction * num_pixels), num_pixels)
        pixel_ids = mask_balanced_pixels(masks, num_pixels - num_balanced, num_balanced, self.config.num_balanced_masks,
                                         covered_only=self.config.uncovered_pixels == "drop")  # fmt: skip
        membership = masks.reshape(masks.shape[0], -1)[:, pixel_ids].T  # [P, M]
        mask_areas = masks.reshape(masks.shape[0], -1).sum(-1).float()
        flat_features = features.reshape(-1, features.shape[-1])
        training_scales = sample_training_scales(torch.sort(mask_scales).values, num_random=self.config.num_random_scales)
        terms = saga_loss(
            flat_features[pixel_ids],
            membership,
            mask_scales,
            mask_areas,
            self.scale_gate,
            training_scales,
            pos_thresh=self.config.positive_hard_threshold,
            neg_thresh=self.config.negative_hard_threshold,
            norm_weight=self.config.norm_loss_weight,
            norm_features=self.norm_pixels(flat_features, outputs["feature_alpha"]),
            norm_squared_of_mean=self.config.norm_loss_form == "code",
            clip_positives=self.config.clip_positives,
            normalisation=self.config.loss_normalisation,
        )
        return {"correspondence_loss": terms["saga_contrastive"], "feature_norm_loss": terms["saga_feature_norm"]}

    def norm_pixels(self, flat_features: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """The rendered features Eq. 11 averages over: the whole map ("paper", "code": as the authors' code), or
        the pixels the splat covers ("covered": not the empty background, where F(p) = 0 is no fault of f_g)."""
        if self.config.norm_loss_form == "covered":
            return flat_features[alpha.reshape(-1) > 0.5]
        return flat_features

    # ---- inference (the method contract) ------------------------------------------------------------
    def decomposition_options(self) -> Dict[str, Any]:
        return {"sample_fraction": self.config.decompose_fraction, "min_sample_size": self.config.decompose_min_samples}

    def affinity_scorer(self) -> AffinityScorer:
        def build() -> AffinityScorer:
            # the deterministic (no neighbour dropout) features, also while the viewer runs during training
            return AffinityScorer(self._cached("features", lambda: self.smoothed_features(training=False)), self.scale_gate)

        return self._cached("scorer", build)

    def gated_gaussian_features(self, scale: float) -> torch.Tensor:
        """S(s) * f_g for every Gaussian, unit-normalised, fp32: [N, D]."""

        def compute() -> torch.Tensor:
            gate = self.scale_gate(torch.tensor([scale], device=self.device, dtype=torch.float32))
            return F.normalize(self.feature_colors() * gate, dim=-1)

        return self._cached(f"gated@{scale:.6f}", compute)

    @torch.no_grad()
    def prompt_query(self, rendered: torch.Tensor, scale: float) -> torch.Tensor:
        """Gated, normalised query features from the features rendered at the clicks [K, D]: [K, D]."""
        gate = self.scale_gate(torch.tensor([scale], device=rendered.device, dtype=torch.float32))
        return F.normalize(rendered * gate, dim=-1)

    @torch.no_grad()
    def gaussian_scores(self, queries: torch.Tensor, scale: float, exact_near: Optional[float] = None) -> torch.Tensor:
        """Per-Gaussian affinity to the prompts: max cosine similarity over queries, [N] in [-1, 1].

        Computed in bfloat16 (:class:`AffinityScorer`); scores within its error of ``exact_near`` are fp32.
        """
        return self.affinity_scorer().scores(queries, scale, exact_near=exact_near)

    @torch.no_grad()
    def decomposition_features(self, scale: float) -> torch.Tensor:
        """S(s) * f_g, unit-normalised: HDBSCAN clusters these into the decomposition at a scale."""
        return self.gated_gaussian_features(scale)

    @torch.no_grad()
    def text_candidates(self, views: LanguageViews) -> clip_vote.MaskQueries:
        """Steps 1-2 of CLIP voting (:mod:`.clip_vote`): one SAGA query per cached mask, grouped into 3D segments.
        Independent of the text: computed once per model state and views."""
        key = ("text_candidates", id(views), len(views.records), self.config.text_threshold, self.config.text_min_iou)
        return self._cached(key, lambda: self._compute_text_candidates(views))

    def _compute_text_candidates(self, views: LanguageViews) -> clip_vote.MaskQueries:
        from tqdm import tqdm

        from segsplat_ns.masks.scales import ScaleQuantiles, mask_scales

        quantiles = ScaleQuantiles.from_tensor(self.scale_quantiles)
        queries, scales, view_ids, mask_ids = [], [], [], []
        was_training = self.training
        self.eval()
        try:
            for view in tqdm(range(len(views.records)), desc="text: mask queries", unit="view", leave=False):
                camera = views.cameras[view : view + 1].to(self.device)
                index_maps = torch.from_numpy(np.asarray(views.records[view].index_maps).astype(np.int64)).to(self.device)
                num_masks = int(index_maps.max()) + 1 if index_maps.numel() else 0
                if num_masks == 0:
                    continue
                # each mask index appears in one level row: a mask's pixels are where any row holds its index
                ids = torch.arange(num_masks, device=self.device)[:, None, None, None]
                masks = (index_maps[None] == ids).any(dim=1)  # [M, H, W]
                outputs = self.get_outputs_for_camera(camera)
                valid = outputs["accumulation"][..., 0] > 0.5
                raw = mask_scales(masks, outputs["depth"][..., 0], camera.get_intrinsics_matrices()[0],
                                  camera.camera_to_worlds[0], valid=valid)
                mask_scale = quantiles.normalize(raw).clamp(0.0, 1.0)
                feature_map, _ = self.render_features(self.feature_colors(), camera)
                inside = (masks & valid).reshape(num_masks, -1).float()  # [M, HW]
                count = inside.sum(dim=1)
                mean = inside @ feature_map.reshape(-1, feature_map.shape[-1]) / count.clamp(min=1)[:, None]
                gates = self.scale_gate(mask_scale.float())  # [M, D]
                keep = count >= 1
                queries.append(F.normalize(mean * gates, dim=-1)[keep])
                scales.append(mask_scale[keep])
                view_ids.append(np.full(int(keep.sum()), view))
                mask_ids.append(torch.nonzero(keep)[:, 0].cpu().numpy())
        finally:
            self.train(was_training)
        if not queries:
            empty = np.zeros(0, dtype=np.int64)
            return clip_vote.MaskQueries(torch.zeros(0, self.config.feature_dim, device=self.device),
                                         torch.zeros(0, device=self.device), empty, empty, empty)
        all_queries, all_scales = torch.cat(queries), torch.cat(scales)
        # each query's selection on a fixed subsample of the Gaussians is enough to tell which masks agree in 3D
        generator = torch.Generator().manual_seed(0)
        sample = torch.randperm(self.num_points, generator=generator)[:20000].to(self.device)
        features = self.feature_colors()[sample]  # unit, smoothed
        gates = self.scale_gate(all_scales.float())  # [Q, D]
        selections = torch.stack([
            (F.normalize(features * gate, dim=-1) @ query) > self.config.text_threshold
            for gate, query in zip(gates, all_queries)
        ])
        group = clip_vote.group_masks(selections, self.config.text_min_iou)
        return clip_vote.MaskQueries(all_queries, all_scales, np.concatenate(view_ids), np.concatenate(mask_ids), group)

    @torch.no_grad()
    def text_scores(self, query: TextQuery, views: LanguageViews) -> TextScores:
        """CLIP voting (:mod:`.clip_vote`): the most relevant mask of the most voted 3D group is a SAGA query at its
        scale; relevancy per Gaussian is the winner's relevancy times the affinity to that query (clamped at 0)."""
        from segsplat_ns.language.relevancy import relevancy

        candidates = self.text_candidates(views)
        per_view = [relevancy(torch.from_numpy(np.asarray(record.features)).float(), query.embedding, query.canonical)
                    for record in views.records]
        mask_relevancy = np.array([float(per_view[v][m]) for v, m in zip(candidates.view, candidates.mask)])
        result = clip_vote.vote(mask_relevancy, candidates.view, candidates.group, candidates.num_groups)
        facts: Dict[str, object] = {"views": len(views.records), "masks": int(len(candidates.view)),
                                    "groups": candidates.num_groups}
        if result.winner is None or result.best is None:
            empty = torch.zeros(self.num_points, dtype=torch.bool, device=self.device)
            return TextScores(torch.zeros(self.num_points, device=self.device), empty, {**facts, "votes": 0})
        scale = float(candidates.scales[result.best])
        threshold = self.config.text_threshold
        affinity = self.gaussian_scores(candidates.queries[result.best : result.best + 1], scale, exact_near=threshold)
        score = float(mask_relevancy[result.best])
        facts.update({"votes": int(result.votes[result.winner]), "scale": scale, "relevancy": score})
        selection = affinity > threshold
        if self.config.text_query == "majority":
            # each view's voted mask is a query at its own scale; a Gaussian is selected by at least half of them
            voters = result.voters
            counts = torch.zeros(self.num_points, device=self.device)
            for q in voters:
                counts += (self.gaussian_scores(candidates.queries[q : q + 1], float(candidates.scales[q]),
                                                exact_near=threshold) > threshold).float()
            selection = counts >= 0.5 * len(voters)
        return TextScores(score * affinity.float().clamp(min=0.0), selection, facts)

    # ---- tooling (the method contract) ------------------------------------------------------------
    @classmethod
    def cpu_training_args(cls, tiny: bool = False) -> List[str]:
        if tiny:
            # the test suite's 48-pixel scenes: 256 uniform pixels per step keep a step short
            return ["--pipeline.model.num-sampled-pixels", "256"]
        # the demo's CPU settings: 512 pixels per step (the preset decides how many are mask-balanced)
        return ["--pipeline.model.num-sampled-pixels", "512"]

    @classmethod
    def latency_probe(cls, num: int, dim: int, threshold: float, generator: torch.Generator) -> Optional[LatencyProbe]:
        """Direct fp32 (the authors' way, the reference), our new-scale and same-scale clicks (:mod:`.scoring`)."""
        return scoring.latency_probe(num, dim, threshold, generator)
