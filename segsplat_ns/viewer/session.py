"""One interactive segmentation session: the clicks, the undo history, reset, the current selection and the scene
decomposition.

Pure: torch and :mod:`segsplat_ns.segmenter` only, no nerfstudio viewer or viser, so it is tested without a
viewer (``tests/test_viewer.py``). Every segmentation question goes to a :class:`~segsplat_ns.segmenter.Segmenter`
(``click`` for the probe of a new click, ``select`` for the multi-camera union of the stored clicks, ``text`` for a
text prompt); the session only remembers. The viewer's panel (:mod:`segsplat_ns.viewer.panel`) owns one session and
holds the viewer's train lock around its calls.

Undo steps are clicks, text prompts and resets (a reset is undone like a click); moving the scale, level or
threshold re-segments the stored clicks but is not a step. Every snapshot remembers the scale and threshold its
selection was made at, so an undo re-segments the restored clicks only when they differ from the current ones.

A text prompt (``Segmenter.text``) replaces the clicks: its selection becomes the current one and the click list is
emptied, so the next click starts a new click selection (and Undo goes back to the text selection). A text selection
does not depend on the scale or threshold (the method chooses its own), so it is never re-segmented: an undo restores
it as it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import torch

from segsplat_ns.segmenter import Click, PromptError, Segmenter, Selection, TextSelection

HISTORY_LIMIT = 50
"""Undo steps kept (the oldest are dropped)."""

NOTHING_TO_SUBTRACT = "Nothing to subtract from yet: add an object with a positive click first."
NOTHING_TO_UNDO = "Nothing to undo."


@dataclass
class Snapshot:
    """The session before one undoable step."""

    clicks: List[Click]
    selection: Optional[Selection]
    scale: Optional[float]  # what ``selection`` was made at (None: no selection)
    threshold: Optional[float]


@dataclass
class Decomposition:
    """Every Gaussian's segment at one scale (the result of *Decompose scene*)."""

    scale: float
    labels: torch.Tensor  # [N] long, CPU
    colors: torch.Tensor  # [N, 3] in [0, 1], CPU: each segment's display colour
    num_segments: int

    @property
    def num_points(self) -> int:
        return int(self.labels.numel())


class SegmentationSession:
    """Clicks, undo history, reset, selection and decomposition of one interactive session.

    ``segmenter`` makes the :class:`Segmenter` to ask (called only when a step needs one, so that a step that needs
    none works without trained features); it may raise :class:`PromptError` to say why there is none.
    ``text_segmenter`` (default: ``segmenter``) makes the one text prompts ask, i.e. one with a language context.
    State changes only when a step succeeds: a step that raises leaves the session as it was.
    """

    def __init__(self, segmenter: Callable[[], Segmenter], history_limit: int = HISTORY_LIMIT,
                 text_segmenter: Optional[Callable[[], Segmenter]] = None) -> None:
        self._segmenter = segmenter
        self._text_segmenter = text_segmenter or segmenter
        self.history_limit = history_limit
        self.clicks: List[Click] = []
        self.selection: Optional[Selection] = None
        self.scale: Optional[float] = None
        """The scale the current selection was made at (None without a selection)."""
        self.threshold: Optional[float] = None
        """The threshold the current selection was made at (None without a selection)."""
        self.history: List[Snapshot] = []
        self.decomposition: Optional[Decomposition] = None
        self._generation = 0  # bumped by reset: a decomposition started before it is dropped

    # ---- what there is -----------------------------------------------------------------------------------
    @property
    def has_positive(self) -> bool:
        return any(click.positive for click in self.clicks)

    @property
    def click_counts(self) -> Tuple[int, int]:
        """(positive, negative) stored clicks."""
        positives = sum(click.positive for click in self.clicks)
        return positives, len(self.clicks) - positives

    @property
    def can_undo(self) -> bool:
        return bool(self.history)

    @property
    def text_selection(self) -> Optional[TextSelection]:
        """The current selection when a text prompt made it (None: no selection, or clicks made it)."""
        return self.selection if isinstance(self.selection, TextSelection) else None

    # ---- steps -------------------------------------------------------------------------------------------
    def click(self, click: Click, scale: float, threshold: float) -> Selection:
        """Add a click (an undoable step) and return the new selection.

        A positive click is first asked alone: one on empty background raises :class:`PromptError` with the
        segmenter's reason and is not stored; as the session's first click its answer is the selection. Otherwise
        the selection is ``Segmenter.select`` of all stored clicks. A negative click before any positive one raises.
        """
        segmenter = self._segmenter()
        if not click.positive and not self.has_positive:
            raise PromptError(NOTHING_TO_SUBTRACT)
        clicks = self.clicks + [click]
        if click.positive:
            probe = segmenter.click(click.camera, [click.pixel], scale, threshold)
            if probe.scores is None:
                raise PromptError(probe.message or "nothing to select there")
            selection = probe if not self.clicks else segmenter.select(clicks, scale, threshold)
        else:
            selection = segmenter.select(clicks, scale, threshold)
        self._push()
        self.clicks = clicks
        self._set(selection, scale, threshold)
        return selection

    def resegment(self, scale: float, threshold: float) -> Selection:
        """The stored clicks at another scale or threshold (not an undo step)."""
        if not self.clicks:
            raise PromptError("no click yet: nothing to re-segment")
        selection = self._segmenter().select(self.clicks, scale, threshold)
        self._set(selection, scale, threshold)
        return selection

    def text(self, phrase: str) -> TextSelection:
        """Select what a text prompt names (an undoable step that replaces the clicks) and return the selection.

        A prompt that selects nothing raises :class:`PromptError` with the segmenter's reason and is not stored,
        like a click on empty background: there is no slider that would make it select something.
        """
        selection = self._text_segmenter().text(phrase)
        if selection.empty:
            raise PromptError(selection.message or f'nothing selected for "{selection.phrase}"')
        self._push()
        self.clicks = []
        self._set(selection, None, None)
        return selection

    def undo(self, scale: float, threshold: float) -> Optional[Selection]:
        """Go back one step (a click, a text prompt or a reset) and return the restored selection (None: nothing
        selected before it).

        The restored clicks are re-segmented when the scale or threshold changed since their selection was made; a
        restored text selection is restored as it was.
        """
        if not self.history:
            raise PromptError(NOTHING_TO_UNDO)
        snapshot = self.history[-1]
        clicks = list(snapshot.clicks)
        if isinstance(snapshot.selection, TextSelection):
            selection, scale_at, threshold_at = snapshot.selection, None, None
        elif not clicks:
            selection, scale_at, threshold_at = None, None, None
        elif snapshot.selection is None or (snapshot.scale, snapshot.threshold) != (scale, threshold):
            selection = self._segmenter().select(clicks, scale, threshold)
            scale_at, threshold_at = scale, threshold
        else:
            selection, scale_at, threshold_at = snapshot.selection, snapshot.scale, snapshot.threshold
        self.history.pop()
        self.clicks = clicks
        self._set(selection, scale_at, threshold_at)
        return selection

    def reset(self) -> None:
        """Clear the clicks, the selection and the decomposition; undoable when there was something to clear."""
        if self.clicks or self.selection is not None:
            self._push()
        self.clicks = []
        self._set(None, None, None)
        self.decomposition = None
        self._generation += 1

    # ---- decomposition -----------------------------------------------------------------------------------
    def begin_decomposition(self) -> int:
        """A token for a decomposition about to be computed (e.g. in a worker thread)."""
        return self._generation

    def finish_decomposition(self, token: int, decomposition: Decomposition) -> bool:
        """Store a finished decomposition, unless the session was reset since it began (then False)."""
        if token != self._generation:
            return False
        self.decomposition = decomposition
        return True

    # ---- internals ---------------------------------------------------------------------------------------
    def _set(self, selection: Optional[Selection], scale: Optional[float], threshold: Optional[float]) -> None:
        # a text selection is made at no scale or threshold of the sliders
        self.selection = selection
        made_at = selection is not None and not isinstance(selection, TextSelection)
        self.scale, self.threshold = (scale, threshold) if made_at else (None, None)

    def _push(self) -> None:
        self.history.append(Snapshot(list(self.clicks), self.selection, self.scale, self.threshold))
        del self.history[: -self.history_limit]


__all__ = ["Click", "Decomposition", "HISTORY_LIMIT", "SegmentationSession", "Snapshot"]
