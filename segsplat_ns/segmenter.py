"""The one inference API shared by the viewer, the CLI and the evaluation: prompt in, mask out.

Method-agnostic: it asks the model for a rendered feature map, turns click pixels into queries
(``model.prompt_query``), scores every Gaussian (``model.gaussian_scores``) and thresholds (boolean scores, from
models whose scores are 0 or 1, are the selection itself). 2D masks are the
selected Gaussians rendered through the scene's geometry, so they are the 3D selection seen from any camera.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch
from nerfstudio.cameras.cameras import Cameras

from segsplat_ns.base_model import SegSplatModel

Pixel = Tuple[int, int]


class PromptError(ValueError):
    """A prompt that cannot be answered (bad scale, pixel outside the image, model without features)."""


@dataclass
class Selection:
    """Result of a prompt: which Gaussians were selected, and why nothing was when nothing was."""

    gaussian_mask: torch.Tensor  # [N] bool
    scores: Optional[torch.Tensor] = None  # [N] affinity to the prompt (bool for 0/1 scores, see select_scores)
    message: Optional[str] = None

    @property
    def count(self) -> int:
        return int(self.gaussian_mask.sum())

    @property
    def empty(self) -> bool:
        return self.count == 0


class Segmenter:
    """Click / scale / threshold prompts on a trained segsplat model."""

    def __init__(self, model: SegSplatModel, threshold: float = 0.75, background_alpha: float = 0.5):
        if not model.has_features:
            raise PromptError(
                "this model has no trained segmentation features yet: train past --pipeline.model.rgb-steps "
                "(or load a finished run)"
            )
        self.model = model
        self.threshold = threshold
        self.background_alpha = background_alpha

    @property
    def num_gaussians(self) -> int:
        return self.model.num_points

    @staticmethod
    def check_scale(scale: float) -> float:
        if not 0.0 <= float(scale) <= 1.0:
            raise PromptError(f"scale {scale} is outside [0, 1]: it is the quantile of 3D mask sizes (0 = finest parts, 1 = whole scene)")
        return float(scale)

    @staticmethod
    def check_pixels(camera: Cameras, pixels: Sequence[Pixel]) -> torch.Tensor:
        width, height = int(camera.width.item()), int(camera.height.item())
        for x, y in pixels:
            if not (0 <= x < width and 0 <= y < height):
                raise PromptError(f"click ({x}, {y}) is outside the {width}x{height} image")
        return torch.tensor([[int(x), int(y)] for x, y in pixels], dtype=torch.long).reshape(-1, 2)

    @torch.no_grad()
    def click(
        self,
        camera: Cameras,
        pixels: Sequence[Pixel],
        scale: float,
        threshold: Optional[float] = None,
        negative_pixels: Sequence[Pixel] = (),
    ) -> Selection:
        """Select the Gaussians whose scale-gated affinity to the clicked pixels exceeds the threshold.

        Negative clicks remove what they would select. A click on empty background selects nothing and says so.
        """
        scale = self.check_scale(scale)
        threshold = self.threshold if threshold is None else float(threshold)
        camera = camera.to(self.model.device)
        positive = self.check_pixels(camera, pixels).to(self.model.device)
        negative = self.check_pixels(camera, negative_pixels).to(self.model.device)
        empty = torch.zeros(self.num_gaussians, dtype=torch.bool, device=self.model.device)
        if positive.shape[0] == 0:
            return Selection(empty, message="no click yet: click on an object to select it")
        feature_map, alpha = self.model.render_features(self.model.feature_colors(), camera)
        on_object = alpha[positive[:, 1], positive[:, 0], 0] >= self.background_alpha
        if not bool(on_object.any()):
            x, y = positive[0].tolist()
            return Selection(empty, message=f"click ({x}, {y}) is on empty background: nothing there to select")
        positive = positive[on_object]
        scores = self.select_scores(self.model.prompt_query(feature_map, positive, scale), scale, threshold)
        mask = self.passes(scores, threshold).clone()
        if negative.shape[0] > 0:
            negative_scores = self.select_scores(self.model.prompt_query(feature_map, negative, scale), scale, threshold)
            mask &= ~self.passes(negative_scores, threshold)
        if bool(mask.any()):
            message = None
        elif scores.dtype == torch.bool:
            message = "no Gaussian holds the clicked code at this level: try another level"
        else:
            message = f"no Gaussian passes threshold {threshold:.2f}: lower it"
        return Selection(mask, scores, message)

    @staticmethod
    def passes(scores: torch.Tensor, threshold: float) -> torch.Tensor:
        """``scores > threshold``; boolean scores (a model whose scores are 0 or 1) are the selection itself."""
        return scores if scores.dtype == torch.bool else scores > threshold

    @torch.no_grad()
    def select_scores(self, queries: torch.Tensor, scale: float, threshold: float) -> torch.Tensor:
        """Every Gaussian's affinity to the queries, exact where it decides ``scores > threshold``: float [N], or
        bool [N] from a model whose scores are 0 or 1 (binary codes: the selection itself, no threshold).

        This is the part of a click whose cost grows with the number of Gaussians besides rendering
        (``segsplat bench-latency`` measures it).
        """
        return self.model.gaussian_scores(queries, scale, exact_near=threshold)

    @torch.no_grad()
    def render_weight(self, camera: Cameras, gaussian_mask: torch.Tensor) -> torch.Tensor:
        """How much of each pixel's colour comes from the selected Gaussians: [H, W] in [0, 1]."""
        camera = camera.to(self.model.device)
        colors = gaussian_mask.float().reshape(-1, 1).to(self.model.device)
        weight, _ = self.model.render_features(colors, camera)
        return weight[..., 0]

    def render_mask(self, camera: Cameras, gaussian_mask: torch.Tensor) -> torch.Tensor:
        """The selection seen from a camera: pixels whose colour is mostly selected Gaussians, [H, W] bool."""
        return self.render_weight(camera, gaussian_mask) > 0.5

    @torch.no_grad()
    def decompose(self, scale: float, **kwargs) -> torch.Tensor:
        """Every Gaussian labelled by its HDBSCAN cluster of gated features at this scale: [N] long.

        A model with discrete labels (``labels_at_scale``, e.g. binary codes) gives them directly.
        """
        scale = self.check_scale(scale)
        labels_at_scale = getattr(self.model, "labels_at_scale", None)
        if callable(labels_at_scale):
            return labels_at_scale(scale)
        from segsplat_ns.decompose import decompose

        return decompose(self.model.decomposition_features(scale), **kwargs)
