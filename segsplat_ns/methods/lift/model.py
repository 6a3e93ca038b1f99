"""lift — segmentation and language without per-scene training: the training views' masks and CLIP features
lifted onto the RGB splat's Gaussians in one pass.

- after the RGB stage (or ``--pipeline.model.init-from`` any splatfacto run) the feature stage is one step that
  trains nothing; ``finish_training`` then renders every training view once (:mod:`.weights`) and accumulates, per
  Gaussian, its compositing weight in each mask of three nested levels (:mod:`.levels`) and of the language
  cache's three levels;
- per level, the views' masks are associated into 3D instances (:mod:`.association`) and every Gaussian is
  labelled by FlashSplat's weighted vote with its background bias (:mod:`.labels`); the level labels are stored
  as int16 (or int32) per Gaussian;
- per language level, each Gaussian's CLIP feature is the weight-averaged mean of its masks' embeddings (Occam's
  LGS, :mod:`.features`), stored in float16; its total weight is kept as a confidence (an output type);
- inference: a click renders the level's instance codes (:mod:`.codes`) and selects every Gaussian of the clicked
  pixel's instance; the decomposition is every Gaussian's label; a text prompt is LERF's relevancy of the
  per-Gaussian features at LangSplat's chosen level.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Optional, Type

import numpy as np
import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor
from tqdm import tqdm

from segsplat_ns.base_model import SegSplatModel, SegSplatModelConfig
from segsplat_ns.contract import Granularity, LanguageViews, LatencyProbe, TextQuery, TextScores, TrainingViews, Wording
from segsplat_ns.errors import PromptError
from segsplat_ns.language.relevancy import relevancy
from segsplat_ns.methods.common import InferenceMemo
from segsplat_ns.methods.common.scale_levels import (
    SCALE_BINS,
    fallback_level,
    level_histograms,
    level_of_bins,
    scale_bin,
)
from segsplat_ns.methods.lift import association, codes, features, labels
from segsplat_ns.methods.lift.levels import COARSER, NUM_LEVELS, nested_level_maps
from segsplat_ns.methods.lift.weights import LevelEntries, LevelWeights, index_map_weights

__all__ = ["LiftModel", "LiftModelConfig"]

LEVEL_NAMES = ("whole", "part", "subpart")
"""The lifted levels, coarse to fine (level 1 = whole objects)."""


@dataclass
class LiftModelConfig(SegSplatModelConfig):
    """Masks and CLIP features lifted onto splatfacto's Gaussians in one pass (no feature training)."""

    _target: Type = field(default_factory=lambda: LiftModel)
    feature_dim: int = 1
    """Unused: lift trains no per-Gaussian feature (the shared base's is kept one float wide)."""
    rgb_steps: int = 30000
    """Stage one: splatfacto RGB steps (splatfacto's 30k); then one lifting pass."""
    association_threshold: float = 0.5
    """Jaccard index, over the Gaussians two views both see, at which their masks become one instance."""
    coarser_pixels: Literal["abstain", "vote"] = "abstain"
    """Finer levels where a view has only the whole's mask: abstain (no vote) or vote the whole there."""
    background_bias: float = 0.0
    """gamma of FlashSplat's vote: added to the background's normalised share (0: plain weighted majority)."""
    code_dim: int = 32
    """Floats per level of the rendered instance codes (a click's vote is exact up to this many instances)."""
    text_level: Literal["best", "max"] = "best"
    """Text: LangSplat's choice (the level whose relevancy peaks highest) or each Gaussian's max over levels."""
    text_threshold: float = 0.5
    """Text prompts select Gaussians whose relevancy exceeds this (0.5: closer to the prompt than to every canonical phrase)."""
    channel_chunk: int = 64
    """Mask channels per rasteriser pass while lifting (memory: N x chunk floats)."""


class LiftModel(SegSplatModel):
    config: LiftModelConfig
    feature_key = "lift_unused"
    feature_stage_steps = 1
    score_kind = "selection"
    text_support = "relevancy of each Gaussian's lifted CLIP feature (Occam's LGS)"
    inference_variants = {"text: max over levels": {"text_level": "max"}}
    wording = Wording(
        nothing_selected="the clicked pixel is background at this level in the lifted masks: try another level",
        level_hint="Granularity of what a click selects: the lifted instance under the click at this level "
        "(level 1: whole objects, level 3: the finest masks).",
        uses_threshold=False,
        not_trained="this lift run has not lifted its masks yet: lifting runs after the RGB stage's last step "
        "and one feature-stage step; finish the run or load a finished one",
    )

    # ---- construction ----------------------------------------------------------------------------------
    def populate_method_modules(self) -> None:
        self.register_buffer("level_labels", torch.zeros(0, NUM_LEVELS, dtype=torch.int16))
        self.register_buffer("confidence", torch.zeros(0))
        self.register_buffer("language_features", torch.zeros(0, NUM_LEVELS, 0, dtype=torch.float16))
        self.register_buffer("level_scale_hist", torch.zeros(NUM_LEVELS, SCALE_BINS, dtype=torch.float64))
        self.register_buffer("level_scale_sum", torch.zeros(NUM_LEVELS, dtype=torch.float64))
        self.register_buffer("level_scale_count", torch.zeros(NUM_LEVELS, dtype=torch.float64))
        self._memo = InferenceMemo()

    def initial_features(self, num_points: int) -> Tensor:
        return torch.zeros(num_points, self.config.feature_dim)

    def load_state_dict(self, dict, **kwargs):  # type: ignore[override]
        # the lifted buffers have the checkpoint's sizes (Gaussians, feature width) and label dtype
        for name in ("level_labels", "confidence", "language_features"):
            key = name if name in dict else next((k for k in dict if k.endswith("." + name)), None)
            if key is not None:
                setattr(self, name, dict[key].new_zeros(dict[key].shape))
        super().load_state_dict(dict, **kwargs)

    @property
    def has_features(self) -> bool:
        """The lifted labels exist for the current Gaussians."""
        return bool(self.features_trained) and self.level_labels.shape[0] == self.num_points > 0

    # ---- the one feature-stage step: nothing to train -----------------------------------------------------
    def segmentation_outputs(self, camera: Cameras, crop_ids: Optional[Tensor]) -> Dict[str, Tensor]:
        if self.training or not self.has_features:
            return {}
        colours = torch.cat([self.feature_colors(), self.confidence_colours()[:, None]], -1)
        rendered, alpha = self.render_features(colours, camera, crop_ids)
        confidence = rendered[..., -1:]
        return {
            "features": rendered[..., :-1],
            "feature_alpha": alpha,
            "lift_confidence": confidence.expand(*confidence.shape[:2], 3),
        }

    def feature_loss_dict(self, outputs: Dict[str, Tensor], batch: Dict[str, Any]) -> Dict[str, Tensor]:
        # the trainer needs a loss with a graph; lifting happens in finish_training
        return {"lift_no_training": self.gauss_params[self.feature_key].sum() * 0.0}

    # ---- the lifting pass -------------------------------------------------------------------------------------
    @torch.no_grad()
    def finish_training(self, views: TrainingViews) -> None:
        """Render every training view once, accumulate the weights, associate, vote, average the CLIP features."""
        num, device, language = self.num_points, self.device, views.language
        total = torch.zeros(num, device=device)
        level_total = torch.zeros(NUM_LEVELS, num, device=device)  # total minus the weight where views abstain
        seg = [LevelEntries() for _ in range(NUM_LEVELS)]
        lang = [LevelEntries() for _ in range(NUM_LEVELS)]
        view_labels: List[List[Tensor]] = [[] for _ in range(NUM_LEVELS)]
        mask_counts: List[int] = []
        lang_tables: List[Tensor] = []
        scales, levels = [], []
        for k in tqdm(range(len(views.cameras)), desc="lift: one pass over the training views", unit="view"):
            camera = views.cameras[k : k + 1].to(device)
            masks = views.masks[k].bool().cpu().numpy()
            size = (int(camera.height.item()), int(camera.width.item()))
            if tuple(masks.shape[1:]) != size:
                raise RuntimeError(f"training view {k}: masks are {masks.shape[1]}x{masks.shape[2]}, the camera renders "
                                   f"{size[0]}x{size[1]}: delete the mask cache and rerun")  # fmt: skip
            maps, mask_level = nested_level_maps(masks, self.config.coarser_pixels == "abstain")
            abstain = masks.shape[0]  # the extra column of "only a coarser mask here" (COARSER in the maps)
            maps = np.where(maps == COARSER, abstain, maps)
            all_maps, width = [torch.from_numpy(maps)], abstain + 1
            if language is not None:
                record = language[k]
                # the record's rows are s, m, l (fine to coarse): reversed, coarse first as the levels here
                lang_maps = torch.from_numpy(np.asarray(record.index_maps, dtype=np.int64)[::-1].copy())
                if tuple(lang_maps.shape[1:]) != size:
                    raise RuntimeError(f"training view {k}: language features are {tuple(lang_maps.shape[1:])}, the camera "
                                       f"renders {size}: regenerate them at the training images' resolution")  # fmt: skip
                all_maps.append(lang_maps)
                width = max(width, record.num_masks)
                lang_tables.append(torch.from_numpy(np.asarray(record.features, dtype=np.float16)))

            def render(colours: Tensor, camera: Cameras = camera) -> Tensor:
                return self.render_features(colours, camera)[0]

            view_total, weights = index_map_weights(render, num, torch.cat(all_maps).to(device), width,
                                                    chunk=self.config.channel_chunk)  # fmt: skip
            total += view_total
            for c in range(NUM_LEVELS):
                w, seen = _without_abstentions(weights[c], abstain, view_total)
                level_total[c] += seen
                view_labels[c].append(labels.view_labels(w.rows, w.cols, w.values, seen).cpu())
                seg[c].add(w, masks.shape[0])
                if language is not None:
                    lang[c].add(weights[NUM_LEVELS + c], lang_tables[-1].shape[0])
            mask_counts.append(masks.shape[0])
            scales.append(views.mask_scales[k].reshape(-1).cpu().double())
            levels.append(torch.from_numpy(mask_level))
        total, level_total = total.cpu(), level_total.cpu()
        level_labels, summary = [], []
        for c in range(NUM_LEVELS):
            ids = association.associate(view_labels[c], mask_counts, self.config.association_threshold)
            rows, cols, values = seg[c].concatenated()
            count = int(ids.max()) + 1 if ids.numel() else 0
            voted = labels.instance_labels(rows, ids[cols], values, level_total[c], max(count, 1),
                                           self.config.background_bias)  # fmt: skip
            if c > 0:  # no instance of this level: the Gaussian keeps its coarser label (ids after this level's)
                coarser = level_labels[-1]
                voted = torch.where((voted < 0) & (coarser >= 0), coarser + max(count, 1), voted)
            level_labels.append(_rank_instances(voted))
            summary.append(f"{LEVEL_NAMES[c]} {count} masks' instances -> {int(level_labels[-1].max()) + 1} labelled")
        dtype = torch.int16 if max(int(x.max()) for x in level_labels) < torch.iinfo(torch.int16).max else torch.int32
        self.level_labels = torch.stack(level_labels, 1).to(dtype).to(device)  # Gaussian-major: [N, 3]
        self.confidence = total.to(device)
        if language is not None and lang_tables:
            table = torch.cat(lang_tables)
            lifted = [features.weighted_mean_features(*lang[c].concatenated(), table, num).half() for c in range(NUM_LEVELS)]
            self.language_features = torch.stack(lifted, 1).to(device)  # [N, 3, D]
        else:
            self.language_features = torch.zeros(num, NUM_LEVELS, 0, dtype=torch.float16, device=device)
        hist, scale_sum, scale_count = level_histograms(torch.cat(scales), torch.cat(levels), NUM_LEVELS)
        self.level_scale_hist.copy_(hist)
        self.level_scale_sum.copy_(scale_sum)
        self.level_scale_count.copy_(scale_count)
        self.features_trained.fill_(True)
        self._memo.clear()
        CONSOLE.log(
            f"lift: {len(views.cameras)} views, {sum(mask_counts)} masks; {'; '.join(summary)}; CLIP features "
            f"{'lifted at 3 levels' if self.language_features.shape[-1] else 'not lifted (no language source)'}"
        )

    # ---- inference (the method contract) --------------------------------------------------------------------
    @property
    def granularity(self) -> Granularity:
        """Three levels, coarse to fine: whole, part, subpart."""
        return Granularity("levels", NUM_LEVELS)

    def _state(self) -> tuple:
        ids = self.level_labels
        return (ids.data_ptr(), ids._version, ids.shape[0], float(self.level_scale_count.sum()))

    def level_for_scale(self, scale: float) -> int:
        """0-based level of a quantile-normalised scale: the levels' ranges from the training masks' scales."""
        if float(self.level_scale_count.sum()) <= 0:
            return fallback_level(scale, NUM_LEVELS)
        bins = self._memo.get(self._state(), "bins", lambda: level_of_bins(
            self.level_scale_hist, self.level_scale_sum, self.level_scale_count).tolist())  # fmt: skip
        return bins[scale_bin(scale)]

    def scale_for_level(self, level: int) -> Optional[float]:
        """The middle scale of ``level``'s range (None when the level has none)."""
        if not 0 <= level < NUM_LEVELS:
            raise ValueError(f"level {level + 1} does not exist: lift has levels 1..{NUM_LEVELS}")
        inside = [b for b in range(SCALE_BINS) if self.level_for_scale((b + 0.5) / SCALE_BINS) == level]
        return None if not inside else (inside[len(inside) // 2] + 0.5) / SCALE_BINS

    def level_codes(self, level: int) -> Tensor:
        count = int(self.level_labels[:, level].max()) + 1 if self.level_labels.shape[0] else 0
        return self._memo.get(self._state(), ("codes", level),
                              lambda: codes.instance_codes(count, self.config.code_dim, seed=level).to(self.device))  # fmt: skip

    def feature_colors(self) -> Tensor:
        """Every level's instance code of each Gaussian's label (zeros for background), [N, 3 * code_dim]."""

        def compute() -> Tensor:
            parts = []
            for level in range(NUM_LEVELS):
                ids = self.level_labels[:, level].long()
                table = torch.cat([self.level_codes(level), torch.zeros(1, self.config.code_dim, device=self.device)])
                parts.append(table[torch.where(ids >= 0, ids, torch.full_like(ids, table.shape[0] - 1))])
            return torch.cat(parts, -1)

        return self._memo.get(self._state(), "colours", compute)

    def confidence_colours(self) -> Tensor:
        """Each Gaussian's total weight over the training views mapped to [0, 1): ``T / (T + median T)``."""

        def compute() -> Tensor:
            seen = self.confidence[self.confidence > 0]
            median = seen.median() if seen.numel() else torch.ones((), device=self.confidence.device)
            return self.confidence / (self.confidence + median)

        return self._memo.get(self._state(), "confidence", compute)

    @torch.no_grad()
    def prompt_query(self, rendered: Tensor, scale: float) -> Tensor:
        """The instance under each clicked pixel [K] at the scale's level (-1: background)."""
        level, dim = self.level_for_scale(scale), self.config.code_dim
        return codes.decode(rendered[:, level * dim : (level + 1) * dim], self.level_codes(level))

    @torch.no_grad()
    def gaussian_scores(self, queries: Tensor, scale: float, exact_near: Optional[float] = None) -> Tensor:
        """The Gaussians labelled with a queried instance at the scale's level: bool [N] (the selection)."""
        ids = self.level_labels[:, self.level_for_scale(scale)].long()
        wanted = queries.long().to(ids.device)
        return torch.isin(ids, wanted[wanted >= 0])

    @torch.no_grad()
    def labels_at_scale(self, scale: float) -> Tensor:
        """Every Gaussian's label at the scale's level, 0..K-1 by decreasing size (background is one segment)."""
        from segsplat_ns.decompose import rank_by_size

        level = self.level_for_scale(scale)
        return self._memo.get(self._state(), ("labels", level), lambda: rank_by_size(self.level_labels[:, level].long()))

    @torch.no_grad()
    def text_scores(self, query: TextQuery, views: LanguageViews) -> TextScores:
        """LERF relevancy of the lifted features, at LangSplat's chosen level (or each Gaussian's best level)."""
        if not self.has_features:
            raise PromptError(self.wording.not_trained)
        lifted = self.language_features
        if lifted.shape[-1] == 0:
            raise PromptError(
                "this lift run lifted no CLIP features (it had no language source): rerun it with "
                "--pipeline.datamanager.language.source clip (or folder)"
            )
        scores = torch.zeros(lifted.shape[1], lifted.shape[0], device=lifted.device)  # [3, N]
        for start in range(0, lifted.shape[0], 1 << 16):
            chunk = lifted[start : start + (1 << 16)].float().transpose(0, 1)  # [3, n, D]
            seen = chunk.abs().amax(-1) > 0  # a Gaussian in no mask of a level has no feature there
            scores[:, start : start + chunk.shape[1]] = torch.where(
                seen, relevancy(chunk, query.embedding, query.canonical), torch.zeros_like(seen, dtype=torch.float32))
        if self.config.text_level == "best":
            level = int(scores.amax(-1).argmax())
            values, where = scores[level], LEVEL_NAMES[level]
        else:
            values, where = scores.amax(0), "max over levels"
        selection = values > self.config.text_threshold
        return TextScores(
            relevancy=values, selection=selection, facts={"level": where, "selected": int(selection.sum())}
        )

    # ---- tooling ----------------------------------------------------------------------------------------------
    @classmethod
    def latency_probe(cls, num: int, dim: int, threshold: float, generator: torch.Generator) -> Optional[LatencyProbe]:
        """The label compare of a click and the whole click from rendered codes (:func:`.codes.latency_probe`)."""
        return codes.latency_probe(num, generator)


def _without_abstentions(weights: LevelWeights, abstain: int, view_total: Tensor) -> "tuple[LevelWeights, Tensor]":
    """One view's level weights without its abstention column, and each Gaussian's weight where the view does
    vote at that level (``view_total`` minus the abstention weight)."""
    out = weights.cols == abstain
    seen = view_total.clone().index_add_(0, weights.rows[out], -weights.values[out]).clamp_min(0)
    keep = ~out
    return LevelWeights(weights.rows[keep], weights.cols[keep], weights.values[keep]), seen


def _rank_instances(voted: Tensor) -> Tensor:
    """Instance labels renumbered 0..K-1 by decreasing Gaussian count (background stays -1), so the largest
    instances get the orthonormal codes."""
    out = torch.full_like(voted, labels.BACKGROUND)
    inside = voted >= 0
    if bool(inside.any()):
        unique, inverse, counts = torch.unique(voted[inside], return_inverse=True, return_counts=True)
        order = torch.argsort(counts, descending=True, stable=True)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(order.numel())
        out[inside] = rank[inverse]
    return out
