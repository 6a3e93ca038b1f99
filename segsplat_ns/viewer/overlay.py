"""The segmentation overlay of the viewer's renders: the ``selection``, ``affinity`` and ``clusters`` output types,
the ``relevancy`` output type while the selection is a text prompt's, and the selection shown in ``rgb``
(highlighted, alone, or not at all).

Written against the model's rendering API only (``render_features``, ``render_rgb_subset``, ``num_points``,
``device``); the panel (:mod:`segsplat_ns.viewer.panel`) decides when it applies (the viewer's render threads).
"""

from __future__ import annotations

import colorsys
from typing import TYPE_CHECKING, Any, Dict, Optional

import torch

from segsplat_ns.segmenter import Selection, TextSelection
from segsplat_ns.viewer.session import Decomposition

if TYPE_CHECKING:
    from nerfstudio.cameras.cameras import Cameras

    from segsplat_ns.base_model import SegSplatModel

DISPLAY_HIGHLIGHT = "Highlight selection (others dimmed)"
DISPLAY_ONLY = "Only the selection"
DISPLAY_OFF = "Off (plain render)"
DISPLAY_MODES = [DISPLAY_HIGHLIGHT, DISPLAY_ONLY, DISPLAY_OFF]

DIM_FACTOR = 0.3
"""Brightness of unselected pixels in the highlight display."""
HIGHLIGHT_TINT = (1.0, 0.83, 0.41)
"""Colour mixed into selected pixels (nerfstudio's viewer accent), weight :data:`TINT_WEIGHT`."""
TINT_WEIGHT = 0.25
RELEVANCY_COLORMAP = "turbo"
"""nerfstudio's colormap of the ``relevancy`` output (absolute: 0 and 1 always map to its two ends)."""


def segment_palette(num: int, seed: int = 0) -> torch.Tensor:
    """``num`` well-separated, saturated colours [num, 3] in [0, 1] (golden-ratio hues), deterministic."""
    colors = []
    for i in range(num):
        hue = (0.13 + i * 0.618033988749895) % 1.0
        value = 0.95 if i % 2 == 0 else 0.75
        colors.append(colorsys.hsv_to_rgb(hue, 0.75, value))
    return torch.tensor(colors, dtype=torch.float32).reshape(num, 3)


def decomposition_of(scale: float, labels: torch.Tensor) -> Decomposition:
    """A decomposition with a display colour per segment (labels [N] long, -1: no segment)."""
    labels = labels.detach().cpu().long()
    num = int(labels.max()) + 1 if labels.numel() else 0
    colors = segment_palette(max(num, 1))[labels.clamp_min(0)]
    return Decomposition(scale=scale, labels=labels, colors=colors, num_segments=num)


def add_outputs(
    model: "SegSplatModel",
    camera: "Cameras",
    crop_ids: Optional[torch.Tensor],
    outputs: Dict[str, Any],
    selection: Optional[Selection],
    decomposition: Optional[Decomposition],
    display: str,
) -> Dict[str, Any]:
    """Add ``selection`` [H, W, 1] (how much of each pixel is selected Gaussians), ``affinity`` [H, W, 1] (the
    prompt's per-Gaussian scores, alpha-composited) and ``clusters`` [H, W, 3] to a render's outputs, and show the
    selection in ``rgb`` according to ``display``. While ``selection`` is a text prompt's, ``relevancy`` [H, W, 3]
    is its per-Gaussian relevancy rendered (``Segmenter.relevancy_map``) in the turbo colormap. A selection or
    decomposition of another number of Gaussians (the scene changed since, e.g. densification during ns-train) is
    ignored."""
    if "rgb" not in outputs:
        return outputs
    rgb = outputs["rgb"]
    height, width = rgb.shape[0], rgb.shape[1]
    n = model.num_points
    mask = None
    scores = None
    relevancy = None
    if selection is not None and selection.gaussian_mask.numel() == n and not selection.empty:
        mask = selection.gaussian_mask.to(model.device)
        if selection.scores is not None and selection.scores.numel() == n:
            scores = selection.scores.to(model.device).float()
        if isinstance(selection, TextSelection) and selection.relevancy is not None \
                and selection.relevancy.numel() == n:
            relevancy = selection.relevancy.to(model.device).float()
    if decomposition is not None and decomposition.num_points != n:
        decomposition = None
    if mask is None and decomposition is None:
        zeros1 = rgb.new_zeros(height, width, 1)
        outputs["selection"] = zeros1
        outputs["affinity"] = zeros1
        outputs["clusters"] = rgb.new_zeros(height, width, 3)
        return outputs
    # one render of 5 channels (selection, affinity, cluster colour), 6 with a text prompt's relevancy
    colors = torch.zeros(n, 5 if relevancy is None else 6, device=model.device)
    if mask is not None:
        colors[:, 0] = mask.float()
        if scores is not None:
            colors[:, 1] = scores.clamp(0.0, 1.0)
        if relevancy is not None:
            colors[:, 5] = relevancy.clamp(0.0, 1.0)
    if decomposition is not None:
        colors[:, 2:5] = decomposition.colors.to(model.device)
    rendered, alpha = model.render_features(colors, camera, crop_ids)
    weight = rendered[..., 0:1].clamp(0.0, 1.0)
    outputs["selection"] = weight
    outputs["affinity"] = rendered[..., 1:2].clamp(0.0, 1.0)
    background = outputs.get("background")
    if isinstance(background, torch.Tensor) and background.shape[-1] == 3:
        background = background.reshape(-1, 3)[0]
    else:
        background = rgb.new_ones(3)
    outputs["clusters"] = (rendered[..., 2:5] + (1.0 - alpha) * background).clamp(0.0, 1.0)
    if relevancy is not None:
        outputs["relevancy"] = relevancy_colors(rendered[..., 5:6])
    if mask is not None:
        outputs["rgb"] = displayed_rgb(model, camera, crop_ids, rgb, weight, mask, display)
    return outputs


def relevancy_colors(relevancy: torch.Tensor) -> torch.Tensor:
    """A rendered relevancy map [H, W, 1] in the turbo colormap: [H, W, 3] in [0, 1].

    Coloured here rather than by the viewer's colormap options, which would normalise each frame to its own
    min..max and so hide whether anything passes 0.5 (closer to the text than to every canonical phrase).
    """
    from nerfstudio.utils.colormaps import apply_float_colormap

    return apply_float_colormap(relevancy.clamp(0.0, 1.0), colormap=RELEVANCY_COLORMAP)


def displayed_rgb(
    model: "SegSplatModel",
    camera: "Cameras",
    crop_ids: Optional[torch.Tensor],
    rgb: torch.Tensor,
    weight: torch.Tensor,
    mask: torch.Tensor,
    display: str,
) -> torch.Tensor:
    """The RGB output with the selection shown: highlighted (tinted, others dimmed), alone over the background, or
    unchanged."""
    if display == DISPLAY_HIGHLIGHT:
        tint = torch.tensor(HIGHLIGHT_TINT, device=rgb.device, dtype=rgb.dtype)
        selected = (1.0 - TINT_WEIGHT) * rgb + TINT_WEIGHT * tint
        return weight * selected + (1.0 - weight) * DIM_FACTOR * rgb
    if display == DISPLAY_ONLY:
        subset = mask if crop_ids is None else mask & crop_ids.to(mask.device).bool()
        return model.render_rgb_subset(camera, subset)
    return rgb


__all__ = ["DIM_FACTOR", "DISPLAY_HIGHLIGHT", "DISPLAY_MODES", "DISPLAY_OFF", "DISPLAY_ONLY", "HIGHLIGHT_TINT",
           "RELEVANCY_COLORMAP", "TINT_WEIGHT", "add_outputs", "decomposition_of", "displayed_rgb", "relevancy_colors",
           "segment_palette"]
