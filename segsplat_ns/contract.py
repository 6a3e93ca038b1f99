"""The method contract: everything a segsplat method declares and supplies to the shared layers.

The segmenter, viewer, CLI, evaluation and benchmarks read a method only through this class (which
``SegSplatModel`` inherits): no shared module names a method or probes a model with ``getattr``. Optional hooks
have defaults that say "not supported" (:class:`~segsplat_ns.errors.NotSupported`), so a method overrides only
what its paper answers. No nerfstudio imports: the contract is plain Python and torch.

Hooks, by who calls them:

=========================  ===============================================================================
``granularity``            property: a continuous scale in [0, 1] or L discrete levels
``score_kind``             class attribute: "affinity" (float scores, thresholded) or "selection" (bool)
``wording``                class attribute: the method's user-facing phrases (:class:`Wording`)
``prompt_query``           the rendered features at click pixels -> queries (segmenter)
``gaussian_scores``        queries -> every Gaussian's score (segmenter; the per-Gaussian cost of a click)
``scale_for_level``        a level -> a scale inside its range (levels only; viewer, CLI)
``labels_at_scale``        every Gaussian's discrete label, or None to cluster ``decomposition_features``
``decomposition_features`` per-Gaussian vectors HDBSCAN clusters into a decomposition
``decomposition_options``  the clustering settings the paper fixes (share of Gaussians clustered), or none
``text_support``           class attribute: how the method answers text prompts ("" = it does not)
``text_scores``            a text query + the training views' language features -> per-Gaussian relevancy
                           (and, for a method that decodes per pixel, a per-view relevancy map)
``pixel_granularity``       the language level a method decodes at each pixel of a view (text protocol's report)
``inference_variants``     class attribute: named inference-time option sets the bench reports as ablation rows
``prompts_sam``            class attribute: whether the method places SAM's prompt points itself
``uses_mask_scales``       class attribute: whether training reads the masks' 3D scales (else they are not measured)
``sam_prompt_points``      per training camera, SAM prompt points in [0, 1] (pipeline, before mask extraction)
``cpu_training_args``      classmethod: ns-train flags that size a run for a CPU (bench, demo, tests)
``latency_probe``          classmethod: the method's fast scoring path on synthetic data (bench-latency)
=========================  ===============================================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Dict, List, Literal, Optional, Sequence, Tuple

import torch

from segsplat_ns.errors import NotSupported

if TYPE_CHECKING:
    from nerfstudio.cameras.cameras import Cameras


@dataclass(frozen=True)
class Granularity:
    """How a method's prompts are sized: a continuous scale in [0, 1], ``num_levels`` discrete levels (level 1
    coarsest; passed to the segmenter as a scale inside the level's range), or not at all ("instances": a click
    selects the clicked instance whatever the scale)."""

    kind: Literal["scale", "levels", "instances"] = "scale"
    num_levels: int = 0

    @property
    def discrete(self) -> bool:
        return self.kind == "levels"

    @property
    def sized(self) -> bool:
        """Whether the scale (or level) changes what a prompt selects."""
        return self.kind != "instances"

    def level_label(self, level: int) -> str:
        """The user-facing name of a 0-based level: 'level 1 (coarsest)' ... 'level L (finest)'."""
        suffix = " (coarsest)" if level == 0 else " (finest)" if level == self.num_levels - 1 else ""
        return f"level {level + 1}{suffix}"


CONTINUOUS_SCALE = Granularity("scale")
INSTANCES = Granularity("instances")


@dataclass(frozen=True)
class Wording:
    """The phrases shared layers show for a method (``{threshold}`` is filled in where it appears)."""

    nothing_selected: str = "no Gaussian passes threshold {threshold:.2f}: lower it"
    """Why a click on an object selected nothing."""
    level_hint: str = ""
    """The viewer's hint for the Level selector (methods with levels)."""
    uses_threshold: bool = True
    """Whether the threshold slider changes the selection."""
    not_trained: str = ("this model has no trained segmentation features yet: train past --pipeline.model.rgb-steps "
                        "(or load a finished run)")
    """Why a model cannot answer prompts yet (``has_features`` is False)."""


@dataclass
class ClickProbe:
    """A whole click on a probe's Gaussians, for ``segsplat bench-latency``: what the method renders and how it
    answers from it. ``colors`` [N, C] (the method's ``feature_colors``) are composited at the clicked pixels by
    the shared renderer; ``answer`` takes the features rendered there [K, C] to the selection, bool [N]
    (``prompt_query``, ``gaussian_scores`` and the threshold, as the segmenter does)."""

    colors: torch.Tensor
    answer: Callable[[torch.Tensor], torch.Tensor]


@dataclass
class LatencyProbe:
    """A method's fast scoring path on ``num`` synthetic Gaussians, for ``segsplat bench-latency``.

    ``cases`` maps a column name (e.g. "new scale", "same scale") to a zero-argument callable that performs one
    click's per-Gaussian work (the bench times it, synchronising the device after each call); ``selected`` is how
    many Gaussians the probe's click selects (a sanity column). The probe's tensors live on the device of the
    generator it was given.
    """

    name: str
    cases: Dict[str, Callable[[], object]]
    selected: int
    reference: Optional[str] = None
    """The case that is the paper authors' way, if the probe includes one (ratios are reported against it)."""
    bytes_read: Dict[str, int] = field(default_factory=dict)
    """Bytes a click must read at least, by label (e.g. "fp32", "stored"): each gives a bandwidth bound."""
    facts: Dict[str, object] = field(default_factory=dict)
    """Other things the probe reports, by column name (e.g. the stored dtype, differences from the reference)."""
    click: Optional[ClickProbe] = None
    """The whole click (rendering included), where the method answers clicks."""


@dataclass
class TextQuery:
    """A text prompt, encoded: the phrase, its unit embedding [D] and the canonical phrases' embeddings [C, D]
    (relevancy is measured against them, see :mod:`segsplat_ns.language.relevancy`)."""

    phrase: str
    embedding: torch.Tensor
    canonical: torch.Tensor


@dataclass
class LanguageViews:
    """What a text prompt may read besides the model: the training cameras and each one's language record
    (per-level mask-index maps and per-mask CLIP embeddings, :class:`segsplat_ns.language.features.LanguageRecord`)."""

    cameras: "Cameras"
    records: Sequence[Any]
    source: str = ""
    """Where the features come from, for messages (e.g. "clip", or the synthetic scene's stand-in)."""


@dataclass
class TrainingViews:
    """What a method's ``finish_training`` may read: the training cameras and, per view, its masks bool [M, H, W],
    their quantile-normalised 3D scales [M] and its language record (``None`` without a language source)."""

    cameras: "Cameras"
    masks: Sequence[torch.Tensor]
    mask_scales: Sequence[torch.Tensor]
    language: Optional[Sequence[Any]] = None


@dataclass
class TextScores:
    """A method's answer to a text prompt."""

    relevancy: torch.Tensor
    """Every Gaussian's relevancy to the query, float [N] in [0, 1] (> 0.5: closer to it than to every canonical
    phrase); rendered, it is the 2D relevancy map."""
    selection: Optional[torch.Tensor] = None
    """The method's own 3D selection, bool [N]; None: the selection is ``relevancy`` thresholded."""
    facts: Dict[str, object] = field(default_factory=dict)
    """What the method wants to report (e.g. the votes), by name."""
    view_relevancy: Optional[Callable[["Cameras"], torch.Tensor]] = None
    """The prompt's relevancy seen from a camera, [H, W] in [0, 1], for a method that decodes per pixel (GAGS's
    evaluation); the 2D mask is then LangSplat's mask of this map. None: ``relevancy`` rendered."""


class MethodContract:
    """What every segsplat method declares (class attributes) and supplies (methods). See the module docstring."""

    score_kind: ClassVar[Literal["affinity", "selection"]] = "affinity"
    wording: ClassVar[Wording] = Wording()
    text_support: ClassVar[str] = ""
    """How the method answers text prompts, in a few words for users; empty: it does not."""
    prompts_sam: ClassVar[bool] = False
    """Whether the method places SAM's prompt points itself (:meth:`sam_prompt_points`) instead of SAM's grid."""
    uses_mask_scales: ClassVar[bool] = True
    """Whether training reads each mask's 3D scale (``mask_scales``); False: the pipeline does not measure them (one
    render per training view) and the click protocol sizes no prompt."""
    inference_variants: ClassVar[Dict[str, Dict[str, Any]]] = {}
    """Improvements that act at inference only, by name: model config field -> value. ``segsplat bench`` evaluates
    each trained run once more per variant (an ablation row beside the paper's defaults)."""

    @property
    def granularity(self) -> Granularity:
        """A continuous scale (default), or the number of discrete levels this model was trained with."""
        return CONTINUOUS_SCALE

    # ---- inference --------------------------------------------------------------------------------------
    def prompt_query(self, rendered: torch.Tensor, scale: float) -> torch.Tensor:
        """Queries at a scale from the rendered features at the clicked pixels [K, C] (``feature_colors``
        composited there, :meth:`render_pixels`): [K, ...]."""
        raise NotSupported(f"{type(self).__name__} does not answer click prompts")

    def gaussian_scores(self, queries: torch.Tensor, scale: float, exact_near: Optional[float] = None) -> torch.Tensor:
        """Every Gaussian's score for the queries: float [N] (exact where it decides ``> exact_near``) for
        ``score_kind == "affinity"``, bool [N] (the selection itself) for ``"selection"``."""
        raise NotSupported(f"{type(self).__name__} does not answer click prompts")

    def scale_for_level(self, level: int) -> Optional[float]:
        """A scale in [0, 1] inside 0-based ``level``'s range; None when the level has no range."""
        raise NotSupported(f"{type(self).__name__} has a continuous scale, not levels: use a scale in [0, 1]")

    def labels_at_scale(self, scale: float) -> Optional[torch.Tensor]:
        """Every Gaussian's segment label at a scale (long [N], 0..K-1 by decreasing size), or None when the
        method's decomposition is a clustering of :meth:`decomposition_features`."""
        return None

    def decomposition_features(self, scale: float) -> torch.Tensor:
        """Per-Gaussian vectors [N, C] whose clusters are the segments at a scale."""
        raise NotSupported(f"{type(self).__name__} does not decompose the scene")

    def decomposition_options(self) -> Dict[str, Any]:
        """Keyword arguments of :func:`segsplat_ns.decompose.decompose` the method's paper fixes (e.g. the share of
        Gaussians clustered); a caller's own arguments win. Default: none."""
        return {}

    def text_scores(self, query: TextQuery, views: LanguageViews) -> TextScores:
        """Every Gaussian's relevancy to a text query (and the method's selection, if it makes one)."""
        raise NotSupported(f"{type(self).__name__} does not answer text prompts (its paper has no language mode)")

    def pixel_granularity(self, camera: "Cameras") -> torch.Tensor:
        """For a method that picks a language granularity per pixel: the level it decodes at each pixel of a view,
        long [H, W] indexing the language cache's levels (0 subpart, 1 part, 2 whole; -1 where nothing renders)."""
        raise NotSupported(f"{type(self).__name__} does not pick a granularity per pixel")

    # ---- training data -------------------------------------------------------------------------------
    def sam_prompt_points(self, cameras: "Cameras") -> List[Any]:
        """Per training camera, float [K, 2] (x, y) in [0, 1]: where SAM's automatic generator is prompted
        (methods with ``prompts_sam``; called once the RGB splat is trained, before masks are extracted)."""
        raise NotSupported(f"{type(self).__name__} uses SAM's regular prompt grid")

    # ---- tooling ---------------------------------------------------------------------------------------
    @classmethod
    def cpu_training_args(cls, tiny: bool = False) -> List[str]:
        """ns-train flags (the method's own, beyond the shared schedule) that size a feature stage for a CPU:
        ``tiny`` for the test suite's 48-pixel scenes, else the bench's 96-pixel ones."""
        return []

    @classmethod
    def latency_probe(cls, num: int, dim: int, threshold: float, generator: torch.Generator) -> Optional[LatencyProbe]:
        """The method's click scoring path on ``num`` synthetic Gaussians, or None if it has none to time."""
        return None


def describe_scale(granularity: Granularity, scale: float, level: Optional[int]) -> str:
    """How a prompt's size is shown: 'scale 0.62', 'level 2 of 3', or 'instances' (prompts without a size)."""
    if not granularity.sized:
        return "instances"
    if level is None:
        return f"scale {scale:.2f}"
    return f"level {level + 1} of {granularity.num_levels}"


__all__: Tuple[str, ...] = ("Granularity", "CONTINUOUS_SCALE", "INSTANCES", "Wording", "ClickProbe", "LatencyProbe", "MethodContract",
                            "TextQuery", "LanguageViews", "TextScores", "TrainingViews", "describe_scale", "NotSupported")
