"""The one inference API shared by the viewer, the CLI and the evaluation: prompt in, mask out.

Method-agnostic: it reads the model only through :class:`~segsplat_ns.contract.MethodContract`. It renders the
method's features at the clicked pixels only (``render_pixels``), turns them into queries (``prompt_query``),
scores every Gaussian (``gaussian_scores``) and thresholds ("affinity" scores) or takes the scores as the
selection ("selection" scores). 2D masks are the selected Gaussians rendered through the scene's geometry, so they are the 3D selection
seen from any camera.

Text prompts (:meth:`Segmenter.text`) need a :class:`~segsplat_ns.language.context.LanguageContext` (the text
encoder and the training views' language features) and a method that declares ``text_support``; the method
scores every Gaussian's relevancy (``text_scores``) and may make its own selection. The 2D relevancy map is the
per-Gaussian relevancy rendered; the 2D mask is the method's selection rendered, or, for a method that gives only
relevancy, LangSplat's mask of the relevancy map (:mod:`segsplat_ns.language.relevancy`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from segsplat_ns.contract import Granularity, describe_scale
from segsplat_ns.errors import PromptError

if TYPE_CHECKING:
    from nerfstudio.cameras.cameras import Cameras

    from segsplat_ns.base_model import SegSplatModel
    from segsplat_ns.language.context import LanguageContext

Pixel = Tuple[int, int]

__all__ = ["Click", "PromptError", "Segmenter", "Selection", "TextSelection"]


@dataclass
class Selection:
    """Result of a prompt: which Gaussians were selected, and why nothing was when nothing was."""

    gaussian_mask: torch.Tensor  # [N] bool
    scores: Optional[torch.Tensor] = None  # [N] the prompt's scores (float affinity, or bool for "selection")
    message: Optional[str] = None

    @property
    def count(self) -> int:
        return int(self.gaussian_mask.sum())

    @property
    def empty(self) -> bool:
        return self.count == 0


@dataclass
class TextSelection(Selection):
    """Result of a text prompt: the selection, every Gaussian's relevancy, and whether the selection is the
    method's own (rendered as the 2D mask) or the relevancy thresholded (LangSplat's 2D mask)."""

    relevancy: Optional[torch.Tensor] = None  # [N] float in [0, 1]
    phrase: str = ""
    method_selection: bool = True
    facts: Dict[str, object] = field(default_factory=dict)
    view_relevancy: Optional[Callable[["Cameras"], torch.Tensor]] = None  # TextScores.view_relevancy


@dataclass
class Click:
    """One click of an interactive session: a pixel of a camera's image, adding to or subtracting from the
    selection."""

    camera: "Cameras"  # [1]
    pixel: Pixel  # (x, y)
    positive: bool = True


def _camera_key(camera: "Cameras") -> Tuple[float, ...]:
    values = torch.cat(
        [
            camera.camera_to_worlds.reshape(-1).float().cpu(),
            torch.stack([camera.fx, camera.fy, camera.cx, camera.cy]).reshape(-1).float().cpu(),
            torch.stack([camera.width, camera.height]).reshape(-1).float().cpu(),
        ]
    )
    return tuple(round(float(v), 5) for v in values)


class Segmenter:
    """Click / scale (or level) / threshold prompts, and decomposition, on a trained segsplat model."""

    def __init__(self, model: "SegSplatModel", threshold: float = 0.75, background_alpha: float = 0.5,
                 language: Optional["LanguageContext"] = None):
        if not model.has_features:
            raise PromptError(model.wording.not_trained)
        self.model = model
        self.threshold = threshold
        self.background_alpha = background_alpha
        self.language = language

    @property
    def num_gaussians(self) -> int:
        return self.model.num_points

    @property
    def granularity(self) -> Granularity:
        return self.model.granularity

    # ---- prompt sizes ------------------------------------------------------------------------------------
    @staticmethod
    def check_scale(scale: float) -> float:
        if not 0.0 <= float(scale) <= 1.0:
            raise PromptError(
                f"scale {scale} is outside [0, 1]: it is the quantile of 3D mask sizes (0 = finest parts, 1 = whole scene)"
            )
        return float(scale)

    def scale_for_level(self, level: int) -> float:
        """The scale a 0-based level is answered at; clear errors for a continuous-scale model, a level that does
        not exist, or one that received too few training masks to have a range."""
        granularity = self.granularity
        if not granularity.sized:
            raise PromptError(
                f"this run's model ({type(self.model).__name__}) has no levels or scale: a click selects the clicked "
                "instance, whatever the scale; leave out the level"
            )
        if not granularity.discrete:
            raise PromptError(
                f"levels are for methods with discrete levels; this run's model ({type(self.model).__name__}) "
                "has a continuous scale: give a scale in [0, 1] instead"
            )
        if not 0 <= level < granularity.num_levels:
            raise PromptError(f"level {level + 1} does not exist: this model has levels 1..{granularity.num_levels}")
        scale = self.model.scale_for_level(level)
        if scale is None:
            raise PromptError(
                f"level {level + 1} received too few of the training masks to have learnt groups (the model gives "
                "it no range of scales): choose another level"
            )
        return float(scale)

    def describe(self, scale: float, level: Optional[int] = None) -> str:
        """'scale 0.62' or 'level 2 of 3', for messages."""
        return describe_scale(self.granularity, scale, level)

    @staticmethod
    def check_pixels(camera: "Cameras", pixels: Sequence[Pixel]) -> torch.Tensor:
        width, height = int(camera.width.item()), int(camera.height.item())
        for x, y in pixels:
            if not (0 <= x < width and 0 <= y < height):
                raise PromptError(f"click ({x}, {y}) is outside the {width}x{height} image")
        return torch.tensor([[int(x), int(y)] for x, y in pixels], dtype=torch.long).reshape(-1, 2)

    # ---- clicks ------------------------------------------------------------------------------------------
    def nothing_selected(self, threshold: float) -> str:
        return self.model.wording.nothing_selected.format(threshold=threshold)

    @torch.no_grad()
    def click(
        self,
        camera: "Cameras",
        pixels: Sequence[Pixel],
        scale: float,
        threshold: Optional[float] = None,
        negative_pixels: Sequence[Pixel] = (),
    ) -> Selection:
        """Select the Gaussians whose score for the clicked pixels passes the threshold.

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
        # only the clicked pixels are rendered (the model keeps the projection for further clicks in this view)
        rendered, alpha = self.model.render_pixels(self.model.feature_colors(), camera, torch.cat([positive, negative]))
        count = positive.shape[0]
        on_object = alpha[:count, 0] >= self.background_alpha
        if not bool(on_object.any()):
            x, y = positive[0].tolist()
            return Selection(empty, message=f"click ({x}, {y}) is on empty background: nothing there to select")
        scores = self.select_scores(self.model.prompt_query(rendered[:count][on_object], scale), scale, threshold)
        mask = self.passes(scores, threshold).clone()
        if negative.shape[0] > 0:
            negative_scores = self.select_scores(self.model.prompt_query(rendered[count:], scale), scale, threshold)
            mask &= ~self.passes(negative_scores, threshold)
        message = None if bool(mask.any()) else self.nothing_selected(threshold)
        return Selection(mask, scores, message)

    @torch.no_grad()
    def select(self, clicks: Sequence[Click], scale: float, threshold: Optional[float] = None) -> Selection:
        """The selection of a session's clicks, which may be on several cameras.

        Positive clicks are grouped by camera and each group is one :meth:`click` with that camera's negative
        clicks, so with one camera (the usual case) this *is* :meth:`click`. With several cameras the groups are
        united (max over prompts) and every camera's negative clicks are subtracted from the union.
        """
        threshold = self.threshold if threshold is None else float(threshold)
        groups: Dict[Tuple[float, ...], Tuple["Cameras", List[Pixel], List[Pixel]]] = {}
        for click in clicks:
            key = _camera_key(click.camera)
            if key not in groups:
                groups[key] = (click.camera, [], [])
            groups[key][1 if click.positive else 2].append(click.pixel)
        mask = torch.zeros(self.num_gaussians, dtype=torch.bool, device=self.model.device)
        if not any(click.positive for click in clicks):
            return Selection(mask, None, "no click yet: click on an object to select it")
        scores: Optional[torch.Tensor] = None
        messages = []
        for camera, positives, negatives in groups.values():
            if not positives:
                continue
            selection = self.click(camera, positives, scale, threshold, negative_pixels=negatives)
            mask |= selection.gaussian_mask
            if selection.scores is not None:
                prompt_scores = selection.scores.float()
                scores = prompt_scores if scores is None else torch.maximum(scores, prompt_scores)
            if selection.message:
                messages.append(selection.message)
        if len(groups) > 1:
            for camera, _, negatives in groups.values():
                if negatives:
                    mask &= ~self.click(camera, negatives, scale, threshold).gaussian_mask
        message = None if bool(mask.any()) else (messages[0] if messages else self.nothing_selected(threshold))
        return Selection(mask, scores, message)

    def passes(self, scores: torch.Tensor, threshold: float) -> torch.Tensor:
        """``scores > threshold`` for affinity scores; "selection" scores are the selection itself."""
        if self.model.score_kind == "selection":
            return scores.bool()
        return scores > threshold

    @torch.no_grad()
    def select_scores(self, queries: torch.Tensor, scale: float, threshold: float) -> torch.Tensor:
        """Every Gaussian's score for the queries, exact where it decides ``scores > threshold``.

        This is the part of a click whose cost grows with the number of Gaussians besides rendering
        (``segsplat bench-latency`` measures it).
        """
        return self.model.gaussian_scores(queries, scale, exact_near=threshold)

    # ---- text ----------------------------------------------------------------------------------------------
    def check_text_mode(self) -> None:
        """A clear NotSupported when the model has no text mode (before any language features are loaded)."""
        if not self.model.text_support:
            from segsplat_ns.errors import NotSupported
            from segsplat_ns.registry import text_methods

            raise NotSupported(
                f"{type(self.model).__name__} does not answer text prompts (its paper has no language mode): click "
                f"instead, or train a method that does ({', '.join(text_methods()) or 'none installed'})"
            )

    def check_text_support(self) -> None:
        """A clear error when the model has no text mode, or no language features were given."""
        self.check_text_mode()
        if self.language is None:
            raise PromptError(
                "text prompts need the training views' language features: train with "
                "--pipeline.datamanager.language.source clip (or folder), or give a language source to this tool"
            )

    @torch.no_grad()
    def text(self, phrase: str) -> TextSelection:
        """Select what a text prompt names. A prompt nothing in the scene matches selects nothing and says so."""
        self.check_text_support()
        assert self.language is not None
        query = self.language.encode(phrase)
        scores = self.model.text_scores(query, self.language.views)
        relevancy = scores.relevancy.float()
        method_selection = scores.selection is not None
        mask = scores.selection.bool() if scores.selection is not None else relevancy > 0.5
        message = None
        if not bool(mask.any()):
            message = (f'nothing in this scene matches "{query.phrase}": no part of it is closer to the text than to '
                       '"object", "things", "stuff" and "texture"')
        return TextSelection(mask, relevancy, message, relevancy=relevancy, phrase=query.phrase,
                             method_selection=method_selection, facts=dict(scores.facts),
                             view_relevancy=scores.view_relevancy)

    @torch.no_grad()
    def relevancy_map(self, camera: "Cameras", selection: TextSelection) -> torch.Tensor:
        """The text prompt's relevancy seen from a camera: [H, W] in [0, 1] (0 on empty background)."""
        assert selection.relevancy is not None
        if selection.view_relevancy is not None:  # the method decodes the view's rendered features per pixel
            return selection.view_relevancy(camera.to(self.model.device)).clamp(0.0, 1.0)
        colors = selection.relevancy.float().reshape(-1, 1).to(self.model.device)
        rendered, _ = self.model.render_features(colors, camera.to(self.model.device))
        return rendered[..., 0].clamp(0.0, 1.0)

    def text_mask(self, camera: "Cameras", selection: TextSelection, relevancy: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The text prompt's 2D mask: the method's selection rendered, or LangSplat's mask of the relevancy map (always
        for a method that gives a per-view map). ``relevancy``: this camera's :meth:`relevancy_map`, if the caller
        has it already (a per-view map decodes every pixel)."""
        if selection.method_selection and selection.view_relevancy is None:
            return self.render_mask(camera, selection.gaussian_mask)
        from segsplat_ns.language.relevancy import relevancy_mask

        if relevancy is None:
            relevancy = self.relevancy_map(camera, selection)
        return torch.from_numpy(relevancy_mask(relevancy.cpu().numpy()))

    # ---- rendering a selection ---------------------------------------------------------------------------
    @torch.no_grad()
    def render_weight(self, camera: "Cameras", gaussian_mask: torch.Tensor) -> torch.Tensor:
        """How much of each pixel's colour comes from the selected Gaussians: [H, W] in [0, 1]."""
        camera = camera.to(self.model.device)
        colors = gaussian_mask.float().reshape(-1, 1).to(self.model.device)
        weight, _ = self.model.render_features(colors, camera)
        return weight[..., 0]

    def render_mask(self, camera: "Cameras", gaussian_mask: torch.Tensor) -> torch.Tensor:
        """The selection seen from a camera: pixels whose colour is mostly selected Gaussians, [H, W] bool."""
        return self.render_weight(camera, gaussian_mask) > 0.5

    # ---- decomposition -----------------------------------------------------------------------------------
    @torch.no_grad()
    def decomposition(self, scale: float, **kwargs) -> Callable[[], torch.Tensor]:
        """Start a decomposition at a scale: reads the model now (call under the viewer's lock) and returns the
        heavy part, which labels every Gaussian ([N] long) when called (e.g. in a worker thread).

        A method with discrete labels (``labels_at_scale``) gives them directly; otherwise its
        ``decomposition_features`` are clustered by HDBSCAN (:func:`segsplat_ns.decompose.decompose`).
        """
        scale = self.check_scale(scale)
        labels = self.model.labels_at_scale(scale)
        if labels is not None:
            fixed = labels.detach().cpu()
            return lambda: fixed
        features = self.model.decomposition_features(scale).detach().clone()
        options = {**self.model.decomposition_options(), **kwargs}

        def cluster() -> torch.Tensor:
            from segsplat_ns.decompose import decompose

            return decompose(features, **options).cpu()

        return cluster

    def decompose(self, scale: float, **kwargs) -> torch.Tensor:
        """Every Gaussian labelled by its segment at this scale: [N] long (see :meth:`decomposition`)."""
        return self.decomposition(scale, **kwargs)()
