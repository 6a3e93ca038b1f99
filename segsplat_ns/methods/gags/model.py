"""GAGS — granularity-aware feature distillation for language Gaussian splatting (AAAI-26): what the paper adds.

- a 16-float feature per Gaussian (the authors' 512 / 32), rendered through the frozen RGB splat;
- the decoders of Eq. 2 (:mod:`.decoder`): the rendered feature -> a unit 512-d CLIP feature f_clip and the
  granularity weights alpha = softmax(eta) over subpart / part / whole;
- the loss of Eq. 7 (:mod:`.loss`): region-aware (Eq. 5) weighted distillation (Eq. 3) against the language
  cache's three levels, the entropy of alpha (Eq. 4), and from ``consistency_start`` on the region feature
  consistency (Eq. 6) with the entropy weight doubled (the authors' schedule);
- inference: a text prompt scores every Gaussian by LERF's relevancy of its decoded feature (one decoder pass
  over the per-Gaussian features, cached in half precision); a click scores every Gaussian by the cosine of its
  decoded feature to the decoded feature at the clicked pixel;
- presets: ``paper`` decodes one f_clip (``decoded-levels alpha``); ``segsplat`` one per granularity, a prompt
  answered at its best trained level (``decoded-levels every``, docs/gags.md).

Granularity-aware prompting (Eq. 1, :mod:`.prompts`): :meth:`GagsModel.sam_prompt_points` places SAM's prompt
points per training view once the RGB splat exists; the pipeline hands them to the ``sam`` mask source.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Literal, Optional, Tuple, Type

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn import Parameter

from segsplat_ns.base_model import SegSplatModel, SegSplatModelConfig
from segsplat_ns.contract import ClickProbe, LanguageViews, LatencyProbe, TextQuery, TextScores, Wording
from segsplat_ns.errors import PromptError
from segsplat_ns.methods.gags import loss as gags_loss
from segsplat_ns.methods.gags import scoring
from segsplat_ns.methods.gags.decoder import FeatureDecoder, GranularityDecoder

__all__ = ["GagsModel", "GagsModelConfig"]

CLIP_DIM = 512


@dataclass
class GagsModelConfig(SegSplatModelConfig):
    """GAGS's distilled language features on top of splatfacto."""

    _target: Type = field(default_factory=lambda: GagsModel)
    feature_dim: int = 16
    """Width of the per-Gaussian feature f (authors: 512 / 32 = 16)."""
    clip_dim: int = CLIP_DIM
    """D: width of f_clip = D(f_render), the CLIP embedding width (OpenCLIP ViT-B/16: 512)."""
    distill_form: Literal["paper", "code"] = "paper"
    """Eq. 3 as written (sum_n alpha_n ||f_clip - f_n||^2), or the authors' L1 to sum_n alpha_n f_n."""
    consistency_form: Literal["paper", "code"] = "paper"
    """Eq. 6 on f_clip per region size, or the authors' size-weighted variance of the rendered 16-d feature."""
    entropy_weight: float = 0.001
    """lambda_entropy of Eq. 7 before consistency_start (authors' code: 0.001)."""
    late_entropy_weight: float = 0.002
    """lambda_entropy from consistency_start on (authors' code: 0.002)."""
    consistency_weight: float = 0.1
    """lambda_cons of Eq. 7, from consistency_start on (authors' code: 0.1)."""
    consistency_start: int = 15000
    """Feature-stage step from which Eq. 6 applies (authors: iteration 15001 of 30,000)."""
    prompt_grid: int = 8
    """Eq. 1 with the sam mask source: each image is split into prompt-grid x prompt-grid patches (code: 8)."""
    prompt_points_per_patch: int = 16
    """n of Eq. 1: prompt points of a patch seen from its closest view (code: 4 x 4 per cell)."""
    region_smooth: int = 5
    """m_f: alpha is mean-filtered over this many pixels per side before the argmax (authors' code: 5)."""
    text_threshold: float = 0.5
    """Text prompts: Gaussians whose relevancy exceeds this are selected (0.5: closer to the prompt than to
    every canonical phrase)."""
    text_map: Literal["rendered", "gaussians"] = "rendered"
    """A text prompt's 2D relevancy: the view's rendered f decoded per pixel (authors' evaluation), or each
    Gaussian's relevancy rendered."""
    min_level_share: float = 0.1
    """A level is answered (alpha's argmax, the text rule) if its masks covered >= this share of the best level's pixels."""
    decoded_levels: Optional[Literal["alpha", "every"]] = None
    """f_clip: one decoded feature at alpha's level (paper), or one per level, a prompt answered at its best level (preset)."""

    presets: ClassVar[Dict[str, Dict[str, Any]]] = {
        "paper": {"decoded_levels": "alpha"},
        "segsplat": {"decoded_levels": "every"},
    }


class GagsModel(SegSplatModel):
    config: GagsModelConfig
    feature_key = "language_features"
    text_support = "relevancy of each Gaussian's decoded CLIP feature (GAGS)"
    prompts_sam = True
    inference_variants = {"text: per-Gaussian relevancy": {"text_map": "gaussians"}}
    wording = Wording(nothing_selected="no Gaussian's decoded feature is within cosine {threshold:.2f} of the click: lower it")

    def populate_method_modules(self) -> None:
        heads = gags_loss.NUM_LEVELS if self.every_level else 1
        self.feature_decoder = FeatureDecoder(self.config.feature_dim, self.config.clip_dim, heads=heads)
        self.granularity_decoder = GranularityDecoder(self.config.feature_dim)
        # training pixels with a mask at each level, summed over the feature steps: a level with none or few (the
        # synthetic scene's middle level: 0.4 % of pixels) trained its head and alpha too little to be answered
        self.register_buffer("level_pixels", torch.zeros(gags_loss.NUM_LEVELS, dtype=torch.float64))
        self._decoded: Optional[torch.Tensor] = None
        self._decoded_key: Optional[tuple] = None

    @property
    def every_level(self) -> bool:
        """``decoded-levels every``: the decoder gives one feature per granularity (docs/gags.md)."""
        return self.config.decoded_levels == "every"

    def load_state_dict(self, dict, **kwargs):  # type: ignore[override]
        if "level_pixels" not in dict:  # a run saved before the field: every level counts, as it did then
            dict = {**dict, "level_pixels": torch.ones(gags_loss.NUM_LEVELS, dtype=torch.float64)}
        super().load_state_dict(dict, **kwargs)

    @property
    def trained_levels(self) -> torch.Tensor:
        """bool [3]: the levels inference answers at, those whose masks covered at least ``min_level_share`` of the
        training pixels the best-covered level's did (none before training)."""
        pixels = self.level_pixels
        return (pixels > 0) & (pixels >= self.config.min_level_share * pixels.max())

    def _trained_only(self, per_level: torch.Tensor) -> torch.Tensor:
        """``per_level`` [..., 3] with -inf at the levels not trained enough (:attr:`trained_levels`), so an argmax
        picks a trained one; unchanged while none is recorded (an untrained model)."""
        trained = self.trained_levels
        return per_level.masked_fill(~trained, float("-inf")) if trained.any() else per_level

    def granularity_logits(self, f: torch.Tensor) -> torch.Tensor:
        """eta at inference: the granularity decoder's logits [..., 3] over the trained levels."""
        return self._trained_only(self.granularity_decoder.logits(f))

    def best_level(self, best_relevancy: torch.Tensor) -> int:
        """LangSplat's rule over ``decoded-levels every``'s heads: the trained level whose best relevancy [3] is
        highest."""
        return int(self._trained_only(best_relevancy).argmax())

    def method_param_groups(self) -> Dict[str, List[Parameter]]:
        return {
            "feature_decoder": list(self.feature_decoder.parameters()),
            "granularity_decoder": list(self.granularity_decoder.parameters()),
        }

    # ---- training ------------------------------------------------------------------------------------
    def _record_tensors(self, record, height: int, width: int):
        if record is None:
            raise RuntimeError(
                "gags distils CLIP features: train with --pipeline.datamanager.language.source clip (SAM masks + "
                "OpenCLIP) or folder (LangSplat/GAGS-layout language_features/)"
            )
        index_maps = torch.from_numpy(np.asarray(record.index_maps).astype(np.int64)).to(self.device)
        if tuple(index_maps.shape[1:]) != (height, width):  # nearest, as the authors resize seg maps
            index_maps = F.interpolate(index_maps[None].float(), size=(height, width), mode="nearest")[0].long()
        features = torch.from_numpy(np.asarray(record.features, dtype=np.float32)).to(self.device)
        return index_maps.reshape(gags_loss.NUM_LEVELS, -1), features

    def feature_loss_dict(self, outputs: Dict[str, torch.Tensor], batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        rendered = outputs["features"]  # [H, W, C]
        H, W, C = rendered.shape
        index_maps, clip = self._record_tensors(batch.get("language"), H, W)
        f = rendered.reshape(-1, C)
        eta = self.granularity_decoder.logits(f.detach())  # the authors decode eta from the detached feature
        alpha = torch.softmax(eta, dim=-1)
        f_clip = self.feature_decoder(f)
        targets, valid = gags_loss.level_targets(index_maps, clip)
        self.level_pixels += valid.sum(1)  # the pixels each level supervises
        # alpha over the levels a pixel has a mask at (docs/gags.md: the authors drop pixels missing any level)
        present = gags_loss.present_alpha(eta, valid)
        regions = gags_loss.region_map(index_maps, present, H, W, smooth=self.config.region_smooth)
        if self.every_level:
            # each head learns its own level; alpha still learns Eq. 3's choice, from the heads' distances
            distances = gags_loss.level_distances(f_clip, targets)
            distill = (present.T * distances.detach()).sum(0)
        else:
            distill = (gags_loss.distill_map if self.config.distill_form == "paper" else gags_loss.distill_map_code)(
                f_clip, targets, present
            )
        # a pixel without a mask at any level has region -1 (every index map is -1 there): not supervised
        losses = {"gags_distill": gags_loss.region_average(distill, regions)}
        if self.every_level:
            losses["gags_levels"] = gags_loss.level_distill(distances, index_maps)
        late = self.step - self.feature_start_step >= self.config.consistency_start
        entropy_weight = self.config.late_entropy_weight if late else self.config.entropy_weight
        losses["gags_entropy"] = entropy_weight * gags_loss.entropy(alpha)
        if late and self.config.consistency_weight > 0:
            if self.config.consistency_form == "paper" and self.every_level:  # each head over its level's masks
                cons = torch.stack([gags_loss.consistency(f_clip[:, n], index_maps[n])
                                    for n in range(gags_loss.NUM_LEVELS)]).mean()  # fmt: skip
            elif self.config.consistency_form == "paper":
                cons = gags_loss.consistency(f_clip, regions)
            else:
                cons = gags_loss.consistency_code(f, regions)
            losses["gags_consistency"] = self.config.consistency_weight * cons
        return losses

    # ---- Eq. 1: where SAM is prompted ----------------------------------------------------------------
    @torch.no_grad()
    def sam_prompt_points(self, cameras) -> List[np.ndarray]:
        """Per training camera, SAM prompt points (x, y) in [0, 1] by Eq. 1 (:mod:`.prompts`): the rendered depth D,
        every Gaussian's minimum visible depth MD over the views, rendered as a map, patch counts
        ``mean(D^2 / MD^2) * n``, and points drawn by the density of visible Gaussians."""
        from segsplat_ns.methods.gags import prompts

        views = []
        for index in range(len(cameras)):
            camera = cameras[index : index + 1].to(self.device)
            depth = self.get_outputs(camera)["depth"][..., 0]
            pixels, z = self.project_centres(camera)
            views.append((camera, depth, pixels, z))
        # each view's visible depths (views may differ in size), then MD: the minimum over views
        seen = torch.stack([prompts.visible_depths(z[None], px[None], d[None])[0] for _, d, px, z in views])
        md = seen.min(0).values  # [N]
        finite = torch.isfinite(md)
        md_colors = torch.stack([torch.where(finite, md, torch.zeros_like(md)), finite.float()], -1)
        out = []
        for index, (camera, depth, pixels, z) in enumerate(views):
            rendered, _ = self.render_features(md_colors, camera)
            md_map = torch.where(rendered[..., 1] > 1e-3, rendered[..., 0] / rendered[..., 1].clamp_min(1e-3),
                                 torch.full_like(rendered[..., 0], float("inf")))  # fmt: skip
            counts = prompts.patch_prompt_counts(depth, md_map, (self.config.prompt_grid,) * 2,
                                                 self.config.prompt_points_per_patch)  # fmt: skip
            density = prompts.visible_density(pixels, torch.isfinite(seen[index]), *depth.shape)
            generator = torch.Generator().manual_seed(index)
            out.append(prompts.sample_prompt_points(counts.cpu(), density.cpu(), generator).numpy())
        return out

    # ---- inference -----------------------------------------------------------------------------------
    @torch.no_grad()
    def decoded_gaussian_features(self) -> torch.Tensor:
        """Every Gaussian's decoded, unit CLIP feature [N, D] ([N, 3, D] with ``decoded-levels every``) in bfloat16
        (:mod:`.scoring`), cached until the features change."""
        features = self.gauss_params[self.feature_key]
        key = (features.data_ptr(), features.shape[0], features._version, self.step)
        if self._decoded is None or self._decoded_key != key:
            chunks = [self.feature_decoder(chunk.float()).bfloat16() for chunk in torch.split(features.detach(), 65536)]
            empty = features.new_zeros(0, *((gags_loss.NUM_LEVELS,) if self.every_level else ()), self.config.clip_dim)
            self._decoded = torch.cat(chunks) if chunks else empty.bfloat16()
            self._decoded_key = key
        return self._decoded

    def prompt_query(self, rendered: torch.Tensor, scale: float) -> torch.Tensor:
        """The decoded feature at each clicked pixel [K, D] (the scale is not used: the decoder picks the
        granularity of what it renders). ``decoded-levels every``: the feature of alpha's level there, placed in
        that level's block of a [K, 3 D] query (the other blocks zero), so it meets every Gaussian's same level."""
        decoded = self.feature_decoder(rendered.float())
        if not self.every_level:
            return decoded
        picked = F.one_hot(self.granularity_logits(rendered.float()).argmax(-1), gags_loss.NUM_LEVELS)
        return (decoded * picked[..., None]).flatten(-2)

    def gaussian_scores(self, queries: torch.Tensor, scale: float, exact_near: Optional[float] = None) -> torch.Tensor:
        decoded = self.decoded_gaussian_features().float()
        return (decoded.flatten(1) @ queries.float().T).amax(-1)

    def decomposition_features(self, scale: float) -> torch.Tensor:
        """The decoded CLIP features (the paper has no decomposition; clustering them groups what CLIP names alike);
        ``decoded-levels every``: each Gaussian's at the level its alpha picks."""
        decoded = self.decoded_gaussian_features().float()
        if not self.every_level:
            return decoded
        with torch.no_grad():
            level = self.granularity_logits(self.gauss_params[self.feature_key].detach()).argmax(-1)
        return decoded[torch.arange(decoded.shape[0], device=decoded.device), level]

    def text_scores(self, query: TextQuery, views: LanguageViews) -> TextScores:
        """LERF relevancy of every Gaussian's decoded feature (:func:`.scoring.text_relevancy`, bfloat16 with exact
        decisions near the cut); selected: relevancy above ``text_threshold``."""
        if not self.has_features:
            raise PromptError("this gags run has no trained language features yet: finish the feature stage first")
        features = self.gauss_params[self.feature_key].detach()
        phrases = torch.cat([query.embedding[None].float(), query.canonical.float()])
        decoded = self.decoded_gaussian_features()
        levels = gags_loss.NUM_LEVELS if self.every_level else 1

        def exact(indices: torch.Tensor) -> torch.Tensor:  # rows of decoded.flatten(0, 1): Gaussian, then level
            out = self.feature_decoder(features[indices // levels].float())
            return out if levels == 1 else out[torch.arange(indices.numel()), indices % levels]

        with torch.no_grad():  # every level in one product: [N, 3, D] is contiguous, so [3 N, D] is a view
            relevancy, selection, refined = scoring.text_relevancy(decoded.reshape(-1, decoded.shape[-1]), phrases,
                                                                   self.config.text_threshold, exact)  # fmt: skip
        relevancy, selection = relevancy.view(-1, levels), selection.view(-1, levels)
        # with one head per level, LangSplat's rule: answer at the level whose best relevancy is highest
        best = self.best_level(relevancy.amax(0)) if relevancy.numel() else 0
        relevancy, selection = relevancy[:, best], selection[:, best]
        facts: Dict[str, Any] = {"selected": int(selection.sum()), "recomputed in fp32": refined}
        if self.every_level:
            facts["level"] = gags_loss.LEVEL_NAMES[best]
        view_relevancy = None
        if self.config.text_map == "rendered":
            def view_relevancy(camera) -> torch.Tensor:
                return self.rendered_relevancy(camera, phrases)
        return TextScores(relevancy=relevancy, selection=selection, view_relevancy=view_relevancy, facts=facts)

    @torch.no_grad()
    def _decode_view(self, camera, decode) -> Tuple[torch.Tensor, torch.Tensor]:
        """Render f in ``camera`` and apply ``decode`` ([P, C] -> [P, ...]) to every pixel, 65,536 at a time:
        (decoded [H, W, ...], rendered opacity [H, W])."""
        rendered, alpha = self.render_features(self.feature_colors().detach(), camera)
        H, W, C = rendered.shape
        decoded = torch.cat([decode(chunk.float()) for chunk in torch.split(rendered.reshape(-1, C), 65536)])
        return decoded.reshape(H, W, *decoded.shape[1:]), alpha[..., 0]

    def pixel_granularity(self, camera) -> torch.Tensor:
        """m_f of Eq. 5 at inference: the argmax of alpha = softmax(eta) decoded from the rendered f, [H, W] (0
        subpart, 1 part, 2 whole; -1 where the rendered opacity is under 0.5)."""
        levels, alpha = self._decode_view(camera, lambda f: self.granularity_logits(f).argmax(-1))
        return torch.where(alpha >= 0.5, levels, torch.full_like(levels, -1))

    def rendered_relevancy(self, camera, phrases: torch.Tensor) -> torch.Tensor:
        """The authors' text inference (``evaluate_iou_loc.py``): render f in ``camera``, decode each pixel, LERF
        relevancy against ``phrases`` (the prompt, then the canonical phrases): [H, W]. Times the rendered
        opacity: a pixel no Gaussian covers has no feature (the authors' captures are covered everywhere; the
        synthetic scenes' backgrounds are empty, and the decoder's output for a zero feature is arbitrary)."""
        from segsplat_ns.language.relevancy import relevancy as lerf_relevancy

        scores, alpha = self._decode_view(camera, lambda f: lerf_relevancy(self.feature_decoder(f), phrases[0], phrases[1:]))
        if self.every_level:  # [H, W, 3]: the view's map at the level with the highest relevancy (LangSplat's rule)
            scores = scores[..., self.best_level((scores * alpha[..., None]).flatten(0, 1).amax(0))]
        return scores * alpha

    @classmethod
    def latency_probe(cls, num: int, dim: int, threshold: float, generator: torch.Generator) -> LatencyProbe:
        """A text prompt on ``num`` clustered random decoded features (bfloat16, 512-d): the product with the
        prompt and 4 canonical phrases, exact decisions near the cut (the decoder is stood in by a lookup of
        the float32 features). A second case times the ``decoded-levels every`` layout: three features per Gaussian."""
        device = generator.device
        centres = F.normalize(torch.randn(64, CLIP_DIM, generator=generator, device=device), dim=-1)
        labels = torch.randint(64, (num,), generator=generator, device=device)
        noise = torch.randn(num, CLIP_DIM, generator=generator, device=device) / math.sqrt(CLIP_DIM)
        exact_features = F.normalize(centres[labels] + 0.5 * noise, dim=-1)
        decoded = exact_features.bfloat16()
        canonical = F.normalize(torch.randn(4, CLIP_DIM, generator=generator, device=device), dim=-1)
        phrases = torch.cat([centres[:1], canonical])

        def text_prompt():
            return scoring.text_relevancy(decoded, phrases, 0.5, lambda i: exact_features[i])[1]

        # decoded-levels every: three decoded features per Gaussian, one product over all of them, LangSplat's rule
        # (the level with the highest relevancy); each level's features a fresh draw around the same centres
        every = torch.stack([F.normalize(centres[labels] + 0.5 * torch.randn(num, CLIP_DIM, generator=generator,
                                                                             device=device) / math.sqrt(CLIP_DIM),
                                         dim=-1).bfloat16() for _ in range(3)], 1)  # fmt: skip

        def text_prompt_every_level():
            relevancy, selection, _ = scoring.text_relevancy(every.flatten(0, 1), phrases, 0.5,
                                                             lambda i: every.flatten(0, 1)[i].float())  # fmt: skip
            relevancy, selection = relevancy.view(num, 3), selection.view(num, 3)
            return selection[:, int(relevancy.amax(0).argmax())]

        with torch.no_grad():
            ours = text_prompt()
            reference = torch.sigmoid(10.0 * ((exact_features @ phrases[0]) - (exact_features @ canonical.T).amax(-1))) > 0.5
        # a click: the 16-d feature rendered at the pixel, decoded (a random linear map stands in for the trained
        # decoder), against every Gaussian's decoded feature
        rendered_dim = 16
        colors = torch.randn(num, rendered_dim, generator=generator, device=device)
        stand_in_decoder = torch.randn(rendered_dim, CLIP_DIM, generator=generator, device=device) / math.sqrt(rendered_dim)

        def answer(rendered: torch.Tensor) -> torch.Tensor:
            query = F.normalize(rendered.float() @ stand_in_decoder, dim=-1)
            return (decoded @ query.to(decoded.dtype).T).amax(-1).float() > threshold

        return LatencyProbe(
            name="GAGS: relevancy of decoded features (bfloat16, exact near the cut)",
            cases={"text prompt": text_prompt, "text prompt, decoded-levels every": text_prompt_every_level},
            selected=int(ours.sum()),
            bytes_read={"stored": num * CLIP_DIM * 2, "stored, decoded-levels every": num * 3 * CLIP_DIM * 2},
            facts={"stored dtype": "bfloat16", "differs from fp32": int((ours != reference).sum())},
            click=ClickProbe(colors, answer),
        )

    @classmethod
    def cpu_training_args(cls, tiny: bool = False) -> List[str]:
        # consistency from the middle of the feature stage (the authors' 15001 of 30,000); the short CPU feature
        # stages (150 / 1,500 steps, not 30,000) use 10x the authors' learning rates (docs/gags.md)
        return [
            "--pipeline.model.consistency-start", "75" if tiny else "750",
            "--optimizers.language-features.optimizer.lr", "1e-2",
            "--optimizers.feature-decoder.optimizer.lr", "1e-3",
            "--optimizers.granularity-decoder.optimizer.lr", "1e-3",
        ]  # fmt: skip
