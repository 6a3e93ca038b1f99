"""Binary-Gaussian (Yang et al., AAAI-26, arXiv 2512.00944): the nerfstudio model, on the shared base.

What the paper adds (the maths is in the sibling modules :mod:`.codes`, :mod:`.levels`, :mod:`.loss` and
:mod:`.vote`; docs/binary-gaussian.md maps the paper to the code):

- a D-dim latent f_i in [0, 1] per Gaussian (D = sum of the level widths D_l, default 12/10/10 = 32), rendered
  through the frozen geometry (Eq. 2); the rendered F_p is binarised per pixel with the straight-through
  estimator (Eq. 3) and Eq. 8 pushes F_p to 0/1. CHOICE: the latent is kept in [0, 1] by projection after each
  step (no sigmoid, so the paper's lr 0.005 acts on the value itself);
- L coarse-to-fine levels: level l's label is the concatenation of the bits of levels 1..l (Eq. 4), i.e. an
  integer *prefix* of the 32-bit code (:mod:`.codes`); training masks are assigned to levels by nesting and the
  segmenter's scale is mapped to a level (:mod:`.levels`);
- progressive contrastive learning (Eq. 5-6), the virtual negative for positive-only groups (Eq. 7), the
  binarisation regulariser (Eq. 8), weights lambda_reg/guiding/con = 10/1/1 (Eq. 9) (:mod:`.loss`);
- mask-balanced pixel sampling (Sec. 3.5: 2k random pixels + 8k from randomly chosen masks,
  :func:`segsplat_ns.masks.sampling.mask_balanced_pixels`);
- opacity fine-tuned at 2% of its initial learning rate during the feature stage (Sec. 3.5 / 4.2);
- after training, each Gaussian keeps ONE 32-bit integer (buffer ``binary_codes``, int32 [N]); the float latent
  and its optimizer state are dropped from the final checkpoint. The bits are a render-weighted vote over the
  training views followed by two code clean-ups (:mod:`.vote`) and a check against the training masks
  (:mod:`.relabel`), in ``finish_training``. At inference the stored bits are rendered (Eq. 2)
  and the clicked pixel's binarised code gives the query Class_p (Sec. 3.6);
- CHOICE: lambda_reg ramps from 0 to 10 over the first ``reg_warmup_steps`` (500) feature steps;
- CHOICE: each level's Eq. 6 is scaled per anchor pixel (mean of its positive pairs + mean of its negative pairs,
  ``pair_normalisation="anchor"``), so a small object is pulled onto one code as strongly as it is pushed away;
- CHOICE: a clicked prefix that no Gaussian stores is replaced by the nearest stored one, level by level
  (:class:`.codes.PrefixTable`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Literal, Optional, Sequence, Tuple, Type

import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.engine.callbacks import (
    TrainingCallback,
    TrainingCallbackAttributes,
    TrainingCallbackLocation,
)
from torch import Tensor

from segsplat_ns.base_model import SegSplatModel, SegSplatModelConfig
from segsplat_ns.contract import Granularity, LatencyProbe, TrainingViews, Wording
from segsplat_ns.masks.sampling import mask_balanced_pixels
from segsplat_ns.methods.binary_gaussian.codes import (
    CODE_BITS,
    code_prefix,
    latency_probe,
    pack_codes,
    prefix_bits,
    prefix_colors,
    prefix_scores,
    signed_prefix,
    stored_prefixes,
    to_int32,
    unpack_codes,
    with_prefix,
)
from segsplat_ns.methods.binary_gaussian.levels import (
    SCALE_BINS,
    area_rank_groups,
    area_rank_levels,
    fallback_level,
    level_of_bins,
    mask_levels,
    pixel_level_groups,
    scale_bin,
    smallest_masks,
)
from segsplat_ns.methods.binary_gaussian.loss import (
    PairDistance,
    PairNormalisation,
    VirtualNegativePer,
    binarization_loss,
    progressive_contrastive_loss,
    virtual_negative_loss,
)
from segsplat_ns.methods.binary_gaussian.relabel import (
    CodeEvidence,
    VoteTally,
    match_masks,
    merge_siblings,
    pixel_labels,
    render_chunks,
    split_codes,
    taken_masks,
)
from segsplat_ns.methods.binary_gaussian.vote import (
    absorb_small_segments,
    render_weighted_votes,
    snap_codes,
    voted_bits,
)
from segsplat_ns.methods.common.memo import InferenceMemo

__all__ = ["BinaryGaussianModel", "BinaryGaussianModelConfig"]


@dataclass
class BinaryGaussianModelConfig(SegSplatModelConfig):
    """Binary-Gaussian's 32-bit coarse-to-fine codes on top of splatfacto."""

    _target: Type = field(default_factory=lambda: BinaryGaussianModel)
    level_bits: Tuple[int, ...] = (12, 10, 10)
    """D_l: bits of each granularity level l = 1..L, coarse to fine (paper: 12/10/10, D = sum D_l <= 32)."""
    feature_dim: int = 32
    """D = sum of level-bits (set from level-bits; any value given here is replaced)."""
    num_random_pixels: int = 2000
    """Pixels sampled uniformly per image (paper: 2k)."""
    num_mask_pixels: int = 8000
    """Pixels sampled by mask-balanced sampling per image (paper: 8k), split evenly over num-balanced-masks."""
    num_balanced_masks: int = 16
    """Masks drawn at random per image for mask-balanced sampling."""
    uncovered_pixels: Literal["drop", "keep"] = "drop"
    """Uniform pixels no mask covers: dropped (authors' code) or kept."""
    level_rule: Optional[Literal["nesting", "area-rank"]] = None
    """Masks -> levels: by nesting (ours) or a pixel's l-th largest mask (authors' code) (preset)."""
    nest_fraction: float = 0.45
    """Masks -> levels by nesting: a larger mask covering at least this fraction of a mask is its ancestor."""
    reg_warmup_steps: Optional[int] = None
    """lambda_reg of Eq. 9 ramps linearly from 0 over this many feature steps (preset: paper 0, segsplat 500)."""
    lambda_reg: float = 10.0
    """lambda_reg: weight of the binarisation regulariser L_reg (Eq. 8-9; paper 10)."""
    lambda_guiding: float = 1.0
    """lambda_guiding: weight of the virtual-negative guidance sum_l L_VN-l (Eq. 7, 9; paper 1)."""
    lambda_con: float = 1.0
    """lambda_con: weight of the progressive contrastive loss sum_l L_level-l (Eq. 5-6, 9; paper 1)."""
    opacity_finetune: bool = True
    """Fine-tune the opacity the features are rendered with in the feature stage (Sec. 3.5)."""
    opacity_mode: Literal["separate", "shared"] = "separate"
    """Fine-tune a segmentation copy of the opacities (authors' code; RGB splat unchanged) or the RGB splat's own."""
    opacity_lr_factor: float = 0.02
    """Opacity learning rate in the feature stage as a fraction of its initial one (paper: 2%, 0.05 -> 0.001)."""
    finalize_codes: bool = True
    """At the last training step, store each Gaussian's code as one int32 and drop the float latent."""
    vote_codes: Optional[bool] = None
    """Stored f̄_i: render-weighted vote of the rendered bits over the training views, or I(f_i > 0.5) (preset)."""
    snap_radius: Optional[int] = None
    """Code clean-up after the vote: Hamming radius inside each parent group; 0: off (preset: paper 0, segsplat 2)."""
    min_segment_fraction: Optional[float] = None
    """Code clean-up: a sub-segment with under this fraction of its parent's Gaussians joins the nearest large one (preset)."""
    relabel_rounds: Optional[int] = None
    """Code clean-up: rounds of mask-consistent relabelling against the training masks; 0: off (preset)."""
    snap_query: Optional[bool] = None
    """Class_p^l (Sec. 3.6) replaced by the nearest stored prefix, level by level (preset: paper off)."""
    virtual_negative_per: Optional[VirtualNegativePer] = None
    """What Eq. 7's sum is averaged over: every covered sampled "pixel", or the positive-only "group" pixels (preset)."""
    pair_normalisation: Optional[PairNormalisation] = None
    """Scaling of each level's Eq. 6 sum: "split" (code), per "anchor" pixel, or over all "pairs" (preset)."""
    pair_distance: PairDistance = "l2"
    """Eq. 5-6's distance: ||.||_2 with the margin D_l (paper) or its square with a hinge (authors' partial code)."""

    presets: ClassVar[Dict[str, Dict[str, Any]]] = {
        # the paper, and the authors' partial code where the paper is silent (docs/binary-gaussian.md, "Presets")
        "paper": {"reg_warmup_steps": 0, "vote_codes": False, "snap_radius": 0, "min_segment_fraction": 0.0,
                  "relabel_rounds": 0, "snap_query": False, "virtual_negative_per": "group", "pair_normalisation": "split",
                  "level_rule": "area-rank"},
        "segsplat": {"reg_warmup_steps": 500, "vote_codes": True, "snap_radius": 2, "min_segment_fraction": 0.01,
                     "relabel_rounds": 3, "snap_query": True, "virtual_negative_per": "pixel", "pair_normalisation": "anchor",
                     "level_rule": "nesting"},
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        self.level_bits = tuple(int(b) for b in self.level_bits)
        if not self.level_bits or any(b <= 0 for b in self.level_bits) or sum(self.level_bits) > CODE_BITS:
            raise ValueError(f"level-bits {self.level_bits}: need positive widths summing to at most {CODE_BITS}")
        self.feature_dim = sum(self.level_bits)


class BinaryGaussianModel(SegSplatModel):
    config: BinaryGaussianModelConfig
    feature_key = "binary_latent"

    # ---- construction -----------------------------------------------------------------------------
    def populate_method_modules(self) -> None:
        num_levels = len(self.config.level_bits)
        self.register_buffer("binary_codes", torch.zeros(0, dtype=torch.int32))
        self.register_buffer("codes_finalized", torch.tensor(False))
        self.register_buffer("level_scale_sum", torch.zeros(num_levels))
        self.register_buffer("level_scale_count", torch.zeros(num_levels))
        self.register_buffer("level_scale_hist", torch.zeros(num_levels, SCALE_BINS))
        self._memo = InferenceMemo()
        self._level_bins: List[int] = []
        self._level_bins_key: Optional[Tuple[float, ...]] = None
        self._opacity_base_lr: Optional[List[float]] = None
        self.register_buffer("seg_opacity_copied", torch.tensor(False))
        self._optimizers = None

    def initial_features(self, num_points: int) -> Tensor:
        # near the 0.5 threshold: random initial bits that the first few hundred steps can still flip
        return 0.5 + 0.1 * (torch.rand(num_points, self.config.feature_dim) - 0.5)

    @property
    def widths(self) -> Tuple[int, ...]:
        return self.config.level_bits

    @property
    def num_levels(self) -> int:
        return len(self.config.level_bits)

    # ---- codes --------------------------------------------------------------------------------------
    @property
    def latent(self) -> Tensor:
        return self.gauss_params[self.feature_key]

    def _codes_key(self) -> Tuple:
        """Changes whenever the codes may have (latent updated, codes stored, Gaussians resized)."""
        if bool(self.codes_finalized):
            return ("codes", self.binary_codes._version, self.binary_codes.data_ptr(), self.binary_codes.shape[0])
        return ("latent", self.latent._version, self.latent.data_ptr(), self.num_points)

    def _cached(self, key, compute):
        """Inference values derived from the codes, kept until the codes may have changed (:meth:`_codes_key`)."""
        return self._memo.get(self._codes_key(), key, compute)

    def gaussian_codes(self) -> Tensor:
        """Unsigned 32-bit code of every Gaussian, int64 [N]: the stored int32 once finalised, else I(latent > 0.5)."""
        if bool(self.codes_finalized):
            return self._cached("codes", lambda: self.binary_codes.to(torch.int64) & 0xFFFFFFFF)
        return self._cached("codes", lambda: pack_codes(self.latent.detach() > 0.5))

    def gaussian_prefixes(self, level: int) -> Tensor:
        """Class_i^l = Bin2Dec(f̄_i^{1:l}) for every Gaussian, int64 [N] (0-based level)."""
        return self._cached(("prefix", level), lambda: code_prefix(self.gaussian_codes(), prefix_bits(self.widths, level)))

    @torch.no_grad()
    def vote_bits(self, cameras: Optional[Cameras], with_weight: bool = False):
        """Each Gaussian's bits [N, D] bool: the render-weighted majority of the binarised rendered bits (Eq. 3)
        of the pixels it contributes to, over ``cameras`` (the training views); I(latent > 0.5) for Gaussians
        that no view renders (and for exact ties). Without cameras: I(latent > 0.5)."""
        latent = self.latent.detach().clamp(0.0, 1.0)
        fallback = latent > 0.5
        if cameras is None or len(cameras) == 0 or latent.shape[0] == 0:
            return (fallback, latent.new_ones(latent.shape[0])) if with_weight else fallback
        votes = torch.zeros_like(latent)
        weight = latent.new_zeros(latent.shape[0])
        for index in range(len(cameras)):
            camera = cameras[index : index + 1].to(self.device)
            view_votes, view_weight = render_weighted_votes(lambda colors: self.render_features(colors, camera)[0], latent)
            votes += view_votes
            weight += view_weight
        bits = voted_bits(votes, weight, fallback)
        return (bits, weight) if with_weight else bits

    @torch.no_grad()
    def finalize_codes(self, optimizers=None, cameras: Optional[Cameras] = None,
                       masks: Optional[Sequence[Tensor]] = None, mask_scales: Optional[Sequence[Tensor]] = None) -> None:
        """Store one int32 code per Gaussian (``vote_bits`` over ``cameras``, else I(latent > 0.5)), cleaned up
        (:mod:`.vote`; with the training ``masks`` and their ``mask_scales`` also :meth:`relabel_from_masks`);
        drop the float latent and its optimizer state."""
        if bool(self.codes_finalized) and self.latent.shape[1] == 0:
            return
        bits, weight = self.vote_bits(cameras if self.config.vote_codes else None, with_weight=True)
        # without views the weight of a code is its number of Gaussians
        codes = snap_codes(pack_codes(bits), weight, self.widths, self.config.snap_radius)
        codes = absorb_small_segments(codes, self.widths, self.config.min_segment_fraction)
        if self.config.relabel_rounds > 0 and cameras is not None and masks is not None and mask_scales is not None:
            codes = self.relabel_from_masks(codes, cameras, masks, mask_scales)
            codes = absorb_small_segments(codes, self.widths, self.config.min_segment_fraction)
        self._buffers["binary_codes"] = to_int32(codes).to(self.latent.device)
        self.codes_finalized.fill_(True)
        self.latent.data = self.latent.data.new_zeros((self.num_points, 0))
        self.latent.grad = None
        if optimizers is not None:
            table = optimizers if isinstance(optimizers, dict) else optimizers.optimizers
            optimizer = table.get(self.feature_key)
            if optimizer is not None:
                optimizer.state.clear()
        self._memo.clear()

    @torch.no_grad()
    def relabel_from_masks(self, codes: Tensor, cameras: Cameras, masks: Sequence[Tensor],
                           mask_scales: Sequence[Tensor]) -> Tensor:
        """Mask-consistent relabelling (:mod:`.relabel`): levels 2..L, ``relabel_rounds`` rounds each, then codes
        split off for masks whose code a larger mask took, then sibling merges. Masks are read by nesting
        (:func:`.levels.mask_levels`) whatever ``level_rule`` trained the model. ``codes`` unsigned int64 [N];
        returns int64 [N]."""
        from tqdm import tqdm

        codes = codes.to(torch.int64).cpu() & 0xFFFFFFFF
        num_views = len(cameras)
        if num_views != len(masks) or num_views != len(mask_scales):
            raise ValueError(f"relabelling needs one mask set per view: {num_views} views, {len(masks)} mask sets")
        rounds = self.config.relabel_rounds
        view_levels = [mask_levels(masks[i].bool(), mask_scales[i], self.num_levels, self.config.nest_fraction)
                       for i in range(num_views)]
        views = _RelabelViews(self, cameras, masks, mask_scales, view_levels)
        # per level: the rounds (each a pass matching masks and codes + a voting pass, then a last matching pass), the
        # split pass, and the rounds again after a split (the bar's total assumes one split)
        progress = tqdm(total=(self.num_levels - 1) * (4 * rounds + 3) * num_views, desc="binary-gaussian: relabel codes",
                        unit="view", leave=False)
        for level in range(1, self.num_levels):
            bits, parent_bits = prefix_bits(self.widths, level), prefix_bits(self.widths, level - 1)
            codes, prefixes, inverse, evidence, matches = self._relabel_rounds(codes, level, views, progress)
            codes, splits = self._split_taken(codes, prefixes, inverse, bits, parent_bits, matches, level, views)
            progress.update(num_views)
            if splits:  # the new codes now label their masks: the rounds again carry them to the rest of the part
                codes, prefixes, inverse, evidence, matches = self._relabel_rounds(codes, level, views, progress)
            else:
                progress.update((2 * rounds + 1) * num_views)
            counts = torch.bincount(inverse, minlength=prefixes.numel())
            codes = with_prefix(codes, merge_siblings(prefixes, counts, bits, parent_bits, evidence)[inverse], bits)
        progress.close()
        return codes

    def _relabel_rounds(self, codes: Tensor, level: int, views: "_RelabelViews", progress):
        """Steps 1-3 of :mod:`.relabel`, ``relabel_rounds`` times (fewer when nothing changes); returns the codes and
        the last matching pass (prefixes, inverse, evidence, matches) for those codes."""
        rounds = self.config.relabel_rounds
        bits, parent_bits = prefix_bits(self.widths, level), prefix_bits(self.widths, level - 1)
        for round_index in range(rounds + 1):
            prefixes, inverse, evidence, matches = self._match_views(codes, bits, level, views, progress)
            if round_index == rounds:
                break
            kept_apart = evidence.kept_apart()
            tally = VoteTally(codes, prefixes, inverse, bits, parent_bits)
            for start, end in render_chunks(prefixes.numel()):
                votes = torch.zeros(codes.numel(), end - start)
                for index in range(views.count):
                    labels = pixel_labels(views.groups(index, level), matches[index], kept_apart)
                    votes += self._label_votes(labels, start, end, lambda c, i=index: views.render(c, i))
                tally.add(start, votes)
            progress.update(views.count)
            codes, changed = tally.result()
            if changed == 0:
                progress.update((rounds - round_index - 1) * 2 * views.count + views.count)
                break
        return codes, prefixes, inverse, evidence, matches

    def _match_views(self, codes: Tensor, bits: int, level: int, views: "_RelabelViews", progress):
        """One pass over the views: the level's distinct prefixes [K], each Gaussian's index into them [N], the
        together/apart evidence and each view's :class:`.relabel.MaskMatch`."""
        prefixes, inverse = torch.unique(code_prefix(codes, bits), return_inverse=True)
        colors = unpack_codes(codes, self.config.feature_dim).float()
        evidence, matches = CodeEvidence(prefixes.numel()), []
        for index in range(views.count):
            features, alpha = views.render_with_alpha(colors, index)
            rendered = code_prefix(pack_codes(features > 0.5), bits).reshape(-1).cpu()
            where = torch.searchsorted(prefixes, rendered).clamp(max=prefixes.numel() - 1)
            known = (prefixes[where] == rendered) & (alpha.reshape(-1).cpu() > 0.5)
            match = match_masks(views.groups(index, level), torch.where(known, where, -1), views.num_masks(index),
                                prefixes.numel())
            evidence.add(match)
            matches.append(match)
            progress.update()
        return prefixes, inverse, evidence, matches

    def _split_taken(self, codes: Tensor, prefixes: Tensor, inverse: Tensor, bits: int, parent_bits: int,
                     matches, level: int, views: "_RelabelViews") -> Tuple[Tensor, int]:
        """Step 4 of :mod:`.relabel`: per Gaussian, its blending weight into masks taken from its code and into the
        masks its code labels, over all views; then :func:`.relabel.split_codes`."""
        num_codes = prefixes.numel()
        taken_views = torch.zeros(num_codes, dtype=torch.long)
        taken = [taken_masks(match) for match in matches]  # [M] per view; the pixel maps are rebuilt per chunk
        for view_taken in taken:
            taken_views[torch.unique(view_taken[view_taken >= 0])] += 1
        if not bool((taken_views > 0).any()):
            return codes, 0
        split_weight = torch.zeros(codes.numel())
        stay_weight = torch.zeros(codes.numel())
        for start, end in render_chunks(num_codes):
            own = (inverse >= start) & (inverse < end)
            if not bool((taken_views[start:end] > 0).any()) or not bool(own.any()):
                continue
            column = (inverse[own] - start)[:, None]
            split_votes = torch.zeros(codes.numel(), end - start)
            stay_votes = torch.zeros(codes.numel(), end - start)
            for index in range(views.count):
                groups = views.groups(index, level)
                inside, at = groups >= 0, groups.clamp_min(0)
                render = lambda c, i=index: views.render(c, i)  # noqa: E731
                split_votes += self._label_votes(torch.where(inside, taken[index][at], -1), start, end, render)
                stay_votes += self._label_votes(torch.where(inside, matches[index].label[at], -1), start, end, render)
            split_weight[own] = split_votes[own].gather(1, column)[:, 0]
            stay_weight[own] = stay_votes[own].gather(1, column)[:, 0]
        return split_codes(codes, prefixes, inverse, bits, parent_bits, split_weight, stay_weight, taken_views)

    def _label_votes(self, labels: Tensor, start: int, end: int, render) -> Tensor:
        """[N, end - start]: each Gaussian's summed blending weight into the pixels voting for codes start..end
        (one-hot per pixel; a vector-Jacobian product of the linear render)."""
        votes = torch.zeros(self.num_points, end - start)
        inside = (labels >= start) & (labels < end)
        if not bool(inside.any()):
            return votes
        upstream = torch.zeros(labels.numel(), end - start)
        upstream[inside, labels[inside] - start] = 1.0
        colors = torch.zeros(self.num_points, end - start, device=self.device, requires_grad=True)
        with torch.enable_grad():
            rendered = render(colors)
            (grad,) = torch.autograd.grad(rendered, colors, upstream.to(rendered).reshape(rendered.shape))
        return grad.detach().cpu()

    def _restore_latent(self) -> None:
        """Training again after finalisation (resume): the latent restarts from the stored bits."""
        if self.latent.shape[1] == 0 and bool(self.codes_finalized):
            bits = unpack_codes(self.binary_codes, self.config.feature_dim).float()
            self.latent.data = bits.to(self.latent.device)
            self.codes_finalized.fill_(False)
            self._memo.clear()

    def load_state_dict(self, dict, **kwargs):  # type: ignore[override]
        if "gauss_params.seg_opacities" not in dict and "gauss_params.opacities" in dict:
            # a run saved before the segmentation opacity existed tuned the shared one: the features keep reading it
            dict = {**dict, "gauss_params.seg_opacities": dict["gauss_params.opacities"].reshape(-1, 1).clone(),
                    "seg_opacity_copied": torch.tensor(True)}
        latent_key = f"gauss_params.{self.feature_key}"
        if latent_key in dict:
            self.latent.data = self.latent.data.new_zeros(dict[latent_key].shape)
        if "binary_codes" in dict:
            self._buffers["binary_codes"] = torch.zeros_like(dict["binary_codes"]).to(self.binary_codes.device)
        super().load_state_dict(dict, **kwargs)
        self._memo.clear()

    # ---- stage two: opacity fine-tuning and finalisation ---------------------------------------------
    feature_geometry_keys = ("seg_opacities",)

    def extra_gaussian_params(self, num_points: int) -> Dict[str, Tensor]:
        # the segmentation opacity (logit, as "opacities"); a copy of the RGB splat's at the feature stage's start
        return {**super().extra_gaussian_params(num_points), "seg_opacities": torch.zeros(num_points, 1)}

    def seg_opacities_ready(self) -> bool:
        """Whether ``seg_opacities`` holds the feature stage's opacities (copied once when the stage starts)."""
        return bool(self.seg_opacity_copied)

    def feature_geometry(self, crop_ids: Optional[Tensor], detach: bool) -> Dict[str, Tensor]:
        """The RGB geometry with the opacity the features are fine-tuned with (Sec. 3.5): in "separate" mode a
        segmentation copy made when the feature stage starts (the RGB splat and its export keep theirs), in
        "shared" mode the RGB splat's own. The only geometry with a gradient, while the feature stage trains."""
        geometry = self.geometry(crop_ids, detach)
        separate = self.config.opacity_mode == "separate"
        if separate and self.in_feature_stage and not self.seg_opacities_ready():
            with torch.no_grad():
                self.gauss_params["seg_opacities"].copy_(self.gauss_params["opacities"].reshape(-1, 1))
                self.seg_opacity_copied.fill_(True)
        key = "seg_opacities" if separate and self.seg_opacities_ready() else "opacities"
        tuned = self.config.opacity_finetune and self.training and self.in_feature_stage
        if detach and not tuned and key == "opacities":
            return geometry
        opacities = self.gauss_params[key]
        if crop_ids is not None:
            opacities = opacities[crop_ids]
        if not tuned:
            opacities = opacities.detach()
        geometry["opacities"] = torch.sigmoid(opacities).reshape(-1)
        return geometry

    def get_training_callbacks(self, training_callback_attributes: TrainingCallbackAttributes) -> List[TrainingCallback]:
        callbacks = super().get_training_callbacks(training_callback_attributes)
        self._optimizers = training_callback_attributes.optimizers  # finish_training drops the latent's state
        callbacks.append(
            TrainingCallback(
                [TrainingCallbackLocation.BEFORE_TRAIN_ITERATION],
                self._set_opacity_lr,
                args=[training_callback_attributes.optimizers],
            )
        )
        return callbacks

    def _set_opacity_lr(self, optimizers, step: int) -> None:
        """"shared" mode: the RGB opacities' learning rate drops to ``opacity_lr_factor`` of theirs in the feature
        stage ("separate" mode: the segmentation copy has its own optimizer at that rate, method_configs)."""
        if self.config.opacity_mode != "shared":
            return
        optimizer = optimizers.optimizers.get("opacities")
        if optimizer is None:
            return
        if self._opacity_base_lr is None:
            self._opacity_base_lr = [group["lr"] for group in optimizer.param_groups]
        factor = self.config.opacity_lr_factor if self.in_feature_stage else 1.0
        for group, base in zip(optimizer.param_groups, self._opacity_base_lr):
            group["lr"] = base * factor

    def finish_training(self, views: TrainingViews) -> None:
        """After the last step (the method contract): store the codes (:meth:`finalize_codes`)."""
        if self.config.finalize_codes:
            self.finalize_codes(self._optimizers, views.cameras, views.masks, views.mask_scales)

    # ---- rendering ----------------------------------------------------------------------------------
    def feature_colors(self) -> Tensor:
        if self.training and self.in_feature_stage:
            self._restore_latent()
            # Eq. 2-3 in training: the continuous latent f_i in [0, 1] is rendered and the *rendered* F_p is
            # binarised with the STE (Eq. 3, in the losses); Eq. 8 pushes F_p to 0/1. The latent is projected
            # back onto [0, 1] before each render (projected gradient descent), so it stays a soft bit.
            with torch.no_grad():
                self.latent.clamp_(0.0, 1.0)
            return self.latent
        return self._cached("bits", lambda: unpack_codes(self.gaussian_codes(), self.config.feature_dim).float())

    def segmentation_outputs(self, camera: Cameras, crop_ids: Optional[Tensor]) -> Dict[str, Tensor]:
        features, alpha = self.render_features(self.feature_colors(), camera, crop_ids)
        outputs = {"features": features, "feature_alpha": alpha}
        if not self.training:
            with torch.no_grad():
                codes = pack_codes(features > 0.5)
                covered = alpha > 0.5
                background = torch.ones(3, device=features.device)
                for level in range(self.num_levels):
                    colors = prefix_colors(code_prefix(codes, prefix_bits(self.widths, level)), level)
                    outputs[f"panoptic_level{level + 1}"] = torch.where(covered, colors, background)
        return outputs

    # ---- training -----------------------------------------------------------------------------------
    def feature_loss_dict(self, outputs: Dict[str, Tensor], batch: Dict[str, Any]) -> Dict[str, Tensor]:
        features = outputs["features"]  # [H, W, D] continuous rendered latent F
        height, width = features.shape[:2]
        masks = batch["masks"].to(self.device).bool()
        scales = batch["mask_scales"].to(self.device).float()
        if masks.shape[1:] != (height, width):
            raise ValueError(f"masks are {tuple(masks.shape[1:])} but the feature map is {(height, width)}")
        flat = features.reshape(-1, features.shape[-1])
        if masks.shape[0] == 0:
            zero = flat.sum() * 0.0
            return {"binarization_loss": zero, "virtual_negative_loss": zero, "progressive_contrastive_loss": zero}
        area_rank = self.config.level_rule == "area-rank"
        if area_rank:
            levels = area_rank_levels(masks, self.num_levels)
        else:
            levels = mask_levels(masks, scales, self.num_levels, self.config.nest_fraction)
        with torch.no_grad():
            self.level_scale_sum.index_add_(0, levels, scales.to(self.level_scale_sum))
            self.level_scale_count.index_add_(0, levels, torch.ones_like(scales).to(self.level_scale_count))
            bins = (scales.clamp(0.0, 1.0) * SCALE_BINS).long().clamp(max=SCALE_BINS - 1)
            self.level_scale_hist.index_put_((levels, bins), torch.ones_like(scales).to(self.level_scale_hist), accumulate=True)
        pixel_ids = mask_balanced_pixels(
            masks, self.config.num_random_pixels, self.config.num_mask_pixels, self.config.num_balanced_masks,
            covered_only=self.config.uncovered_pixels == "drop",
        )
        membership = masks.reshape(masks.shape[0], -1)[:, pixel_ids].T  # [P, M]
        if area_rank:
            groups = area_rank_groups(membership, masks.reshape(masks.shape[0], -1).sum(-1), self.num_levels)
        else:
            groups = pixel_level_groups(membership, scales, levels, self.num_levels)
        sampled = flat[pixel_ids]
        return {
            "binarization_loss": self.reg_weight() * binarization_loss(sampled),
            "virtual_negative_loss": self.config.lambda_guiding
            * virtual_negative_loss(sampled, groups, self.widths, self.config.virtual_negative_per),
            "progressive_contrastive_loss": self.config.lambda_con
            * progressive_contrastive_loss(sampled, groups, self.widths, self.config.pair_normalisation,
                                           self.config.pair_distance),
        }

    def reg_weight(self) -> float:
        """lambda_reg, ramped linearly from 0 over ``reg_warmup_steps`` feature steps."""
        warmup = self.config.reg_warmup_steps
        if warmup <= 0:
            return self.config.lambda_reg
        done = max(0, self.step - self.feature_start_step)
        return self.config.lambda_reg * min(1.0, done / warmup)

    # ---- inference (the method contract) ------------------------------------------------------------
    score_kind = "selection"
    wording = Wording(
        nothing_selected="no Gaussian holds the clicked code at this level: try another level",
        level_hint="Granularity of what a click selects: every Gaussian whose code shares the clicked pixel's "
        "code prefix at this level (level 1: coarsest, whole objects).",
        uses_threshold=False,
    )

    @property
    def granularity(self) -> Granularity:
        """L discrete levels, coarse to fine (one per entry of ``level-bits``)."""
        return Granularity("levels", self.num_levels)

    def level_for_scale(self, scale: float) -> int:
        """0-based level for a quantile-normalised scale in [0, 1] (:mod:`.levels`)."""
        bin_index = scale_bin(scale)
        if float(self.level_scale_count.sum()) > 0:
            key = tuple(torch.cat([self.level_scale_hist.flatten(), self.level_scale_sum, self.level_scale_count]).tolist())
            if self._level_bins_key != key:
                self._level_bins, self._level_bins_key = self.level_of_bins().tolist(), key
            return self._level_bins[bin_index]
        return fallback_level(scale, self.num_levels)

    def scale_for_level(self, level: int) -> Optional[float]:
        """A scale that selects 0-based ``level`` (the middle of its range; the viewer's level selector), or None
        when the level has no range (it received under ``MIN_LEVEL_SHARE`` of the training masks)."""
        if not 0 <= level < self.num_levels:
            raise ValueError(f"level {level + 1} does not exist: this model has levels 1..{self.num_levels}")
        bins = [b for b in range(SCALE_BINS) if self.level_for_scale((b + 0.5) / SCALE_BINS) == level]
        if not bins:
            return None
        middle = bins[len(bins) // 2]
        return (middle + 0.5) / SCALE_BINS

    def level_of_bins(self) -> Tensor:
        """The level of each scale bin from this model's training statistics (:func:`.levels.level_of_bins`)."""
        return level_of_bins(self.level_scale_hist, self.level_scale_sum, self.level_scale_count)

    @torch.no_grad()
    def prompt_query(self, rendered: Tensor, scale: float) -> Tensor:
        """Class_p^l of the clicked pixels (their rendered codes [K, B]): binarised (Eq. 3), the level prefix."""
        level = self.level_for_scale(scale)
        query = code_prefix(pack_codes(rendered > 0.5), prefix_bits(self.widths, level))
        if self.config.snap_query:
            query = self._cached(("stored", level), lambda: stored_prefixes(self.gaussian_codes(), self.widths, level)).lookup(query)
        return query

    @torch.no_grad()
    def gaussian_scores(self, queries: Tensor, scale: float, exact_near: Optional[float] = None) -> Tensor:
        """True for Gaussians whose level prefix equals a queried one: bool [N], the selection itself (the
        segmenter applies no threshold to boolean scores)."""
        bits = prefix_bits(self.widths, self.level_for_scale(scale))
        prefixes = self._cached(("signed prefix", bits), lambda: signed_prefix(self.gaussian_codes(), bits))
        return prefix_scores(prefixes, queries, bits)

    @torch.no_grad()
    def labels_at_scale(self, scale: float) -> Tensor:
        """Every Gaussian's label at the level of ``scale``: long [N], 0..K-1 by decreasing segment size."""
        from segsplat_ns.decompose import rank_by_size

        return rank_by_size(self.gaussian_prefixes(self.level_for_scale(scale)))

    @torch.no_grad()
    def decomposition_features(self, scale: float) -> Tensor:
        """The prefix bits at the level of ``scale`` as floats [N, B_l] (for feature-based tools)."""
        level = self.level_for_scale(scale)
        bits = unpack_codes(self.gaussian_codes(), prefix_bits(self.widths, level))
        return bits.float()

    # ---- tooling (the method contract) ------------------------------------------------------------
    @classmethod
    def cpu_training_args(cls, tiny: bool = False) -> List[str]:
        if tiny:
            # the test suite's 48-pixel scenes: 128 uniform + 384 mask-balanced pixels per step
            return ["--pipeline.model.num-random-pixels", "128", "--pipeline.model.num-mask-pixels", "384"]
        # the paper's 2k + 8k pixels are GPU-sized; 300 + 700 keep its ratio (about 0.15 s a step here, docs/binary-gaussian.md)
        return ["--pipeline.model.num-random-pixels", "300", "--pipeline.model.num-mask-pixels", "700"]

    @classmethod
    def latency_probe(cls, num: int, dim: int, threshold: float, generator: torch.Generator) -> Optional[LatencyProbe]:
        """The int32 prefix compare at a new level and at the same level (:func:`.codes.latency_probe`)."""
        return latency_probe(num, generator)


class _RelabelViews:
    """The training views as relabelling reads them: renders through the model, and each view's masks as a pixel ->
    mask map per level (recomputed on demand: one [H*W] map at a time)."""

    def __init__(self, model: BinaryGaussianModel, cameras: Cameras, masks: Sequence[Tensor], mask_scales: Sequence[Tensor],
                 levels: Sequence[Tensor]) -> None:
        self.model, self.cameras, self.masks, self.mask_scales, self.levels = model, cameras, masks, mask_scales, levels
        self.count = len(cameras)

    def render_with_alpha(self, colors: Tensor, index: int) -> Tuple[Tensor, Tensor]:
        return self.model.render_features(colors.to(self.model.device), self.cameras[index : index + 1].to(self.model.device))

    def render(self, colors: Tensor, index: int) -> Tensor:
        return self.render_with_alpha(colors, index)[0]

    def num_masks(self, index: int) -> int:
        return int(self.masks[index].shape[0])

    def groups(self, index: int, level: int) -> Tensor:
        masks = self.masks[index].bool().cpu()
        return smallest_masks(masks.flatten(1).T, self.mask_scales[index], self.levels[index], level)
