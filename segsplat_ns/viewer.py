"""Interactive segmentation in the nerfstudio web viewer, written once against :class:`~segsplat_ns.segmenter.Segmenter`.

:class:`SegmentationControls` is owned by :class:`~segsplat_ns.pipeline.SegSplatPipeline` (attribute
``segmentation``). nerfstudio's viewer scrapes the pipeline's module tree for ``ViewerElement`` and
``ViewerControl`` objects (``nerfstudio/viewer/utils.py::parse_object``, in ``dir()`` order, i.e. alphabetical
by attribute name), so the elements below are attributes with ``a_``..``k_`` prefixes and appear, in this
order, in the folder *Custom Elements / segmentation* of the Control tab:

====================  =================================================================================
Status                what happened last (also sent as a viewer notification when it is a warning)
Click mode            Off / Add (positive click) / Subtract (negative click): registers
                      ``ViewerControl.register_pointer_cb("click")``
Scale, Threshold      re-segment from the stored clicks (and re-render). For a model with discrete levels
                      (``scale_for_level``: binary-gaussian) *Scale* is a *Level* dropdown instead; each level
                      is passed to the segmenter as a scale inside that level's range
Undo, Reset           undo the last click / reset; Undo also undoes a Reset
Display               the selection in the RGB render: highlighted (others dimmed), alone, or not at all
Decompose scene       every Gaussian coloured by its HDBSCAN segment at the current scale (output
                      ``clusters``); pressing it again at another scale recomputes. Models with discrete
                      labels (``labels_at_scale``) give them directly
Export selection      ``<run>/segments/selection_<n>.ply`` (the ``ns-export gaussian-splat`` format)
Exported to           the last path written
====================  =================================================================================

Output types added to eval renders of the viewer (``SegSplatModel.get_outputs`` calls :meth:`add_outputs`):
``selection`` [H, W, 1] (how much of each pixel is selected Gaussians), ``affinity`` [H, W, 1] (the per-Gaussian
prompt scores, alpha-composited) and ``clusters`` [H, W, 3]; ``rgb`` is changed according to *Display*. Only the
viewer's render threads see them: ``ns-eval`` metrics and ``ns-render`` are untouched.

Threading: element callbacks already run under the viewer's train lock (nerfstudio wraps them and re-renders
afterwards); the pointer callback takes the same lock itself. Every callback does at most one re-segmentation
while holding the lock; the HDBSCAN part of *Decompose* runs in a worker thread without it. Exceptions in
callbacks become status messages, never tracebacks.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.utils.rich_utils import CONSOLE
from nerfstudio.viewer.viewer_elements import (
    ViewerButton,
    ViewerClick,
    ViewerControl,
    ViewerDropdown,
    ViewerElement,
    ViewerSlider,
    ViewerText,
)
from torch import nn

from segsplat_ns.segmenter import PromptError, Segmenter, Selection

if TYPE_CHECKING:
    from segsplat_ns.base_model import SegSplatModel

MODE_OFF = "Off"
MODE_ADD = "Add (positive click)"
MODE_SUBTRACT = "Subtract (negative click)"
CLICK_MODES = [MODE_OFF, MODE_ADD, MODE_SUBTRACT]

DISPLAY_HIGHLIGHT = "Highlight selection (others dimmed)"
DISPLAY_ONLY = "Only the selection"
DISPLAY_OFF = "Off (plain render)"
DISPLAY_MODES = [DISPLAY_HIGHLIGHT, DISPLAY_ONLY, DISPLAY_OFF]

DEFAULT_SCALE = 0.5


def level_label(level: int, num_levels: int) -> str:
    """The level selector's option for a 0-based level: 'level 1 (coarsest)' ... 'level L (finest)'."""
    suffix = " (coarsest)" if level == 0 else " (finest)" if level == num_levels - 1 else ""
    return f"level {level + 1}{suffix}"
DIM_FACTOR = 0.3
"""Brightness of unselected pixels in the highlight display."""
HIGHLIGHT_TINT = (1.0, 0.83, 0.41)
"""Colour mixed into selected pixels (nerfstudio's viewer accent), weight :data:`TINT_WEIGHT`."""
TINT_WEIGHT = 0.25
DEFAULT_CLICK_LONG_SIDE = 512
"""Long side of the image a click is read on when the viewer's max resolution is unknown."""

START_HINT = "Choose **Click mode: Add**, then click an object in the render."
NO_FEATURES_HINT = (
    "Segmentation features are not trained yet (they train after `--pipeline.model.rgb-steps`): "
    "the controls start working then."
)


class ViewerMarkdown(ViewerElement[str]):
    """A read-only markdown block as a ViewerElement, so it is placed in order with the other elements."""

    def __init__(self, name: str, content: str, visible: bool = True) -> None:
        super().__init__(name, visible=visible)
        self._content = content

    def _create_gui_handle(self, viser_server) -> None:
        self.gui_handle = viser_server.gui.add_markdown(self._content, visible=self.visible)

    def install(self, viser_server) -> None:
        self._create_gui_handle(viser_server)

    @property
    def value(self) -> str:
        return self._content

    @value.setter
    def value(self, content: str) -> None:
        self._content = content
        if self.gui_handle is not None:
            self.gui_handle.content = content  # type: ignore[union-attr]


@dataclass
class Click:
    camera: Cameras  # the viewer camera the click was made on, [1], CPU
    pixel: Tuple[int, int]  # (x, y) on that camera's image
    positive: bool


@dataclass
class _Snapshot:
    clicks: List[Click]
    selection: Optional[Selection]
    scale: float
    threshold: float


@dataclass
class _Decomposition:
    scale: float
    num_points: int
    labels: torch.Tensor  # [N] long
    colors: torch.Tensor  # [N, 3] in [0, 1]
    num_segments: int = 0
    extra: Dict[str, Any] = field(default_factory=dict)


def _in_viewer_render_thread() -> bool:
    from nerfstudio.viewer.render_state_machine import RenderStateMachine

    return isinstance(threading.current_thread(), RenderStateMachine)


def _camera_key(camera: Cameras) -> Tuple[float, ...]:
    values = torch.cat(
        [
            camera.camera_to_worlds.reshape(-1).float().cpu(),
            torch.stack([camera.fx, camera.fy, camera.cx, camera.cy]).reshape(-1).float().cpu(),
            torch.stack([camera.width, camera.height]).reshape(-1).float().cpu(),
        ]
    )
    return tuple(round(float(v), 5) for v in values)


def segment_palette(num: int, seed: int = 0) -> torch.Tensor:
    """``num`` well-separated, saturated colours [num, 3] in [0, 1] (golden-ratio hues), deterministic."""
    import colorsys

    colors = []
    for i in range(num):
        hue = (0.13 + i * 0.618033988749895) % 1.0
        value = 0.95 if i % 2 == 0 else 0.75
        colors.append(colorsys.hsv_to_rgb(hue, 0.75, value))
    return torch.tensor(colors, dtype=torch.float32).reshape(num, 3)


class SegmentationControls(nn.Module):
    """The viewer's segmentation panel. A parameter-free module, so that the viewer finds its elements inside
    the pipeline and the pipeline's state dict is unchanged."""

    def __init__(self, pipeline: nn.Module) -> None:
        super().__init__()
        # Not submodules: the pipeline owns the model; a weak reference avoids a cycle and state-dict entries.
        self.__dict__["_pipeline_ref"] = weakref.ref(pipeline)
        self.__dict__["_state_lock"] = threading.RLock()

        self.a_status = ViewerMarkdown("Status", START_HINT)
        self.b_click_mode = ViewerDropdown(
            "Click mode",
            MODE_OFF,
            CLICK_MODES,
            cb_hook=self._guarded(self._on_mode),
            hint="Add: a click selects the object under the cursor. Subtract: a click removes what it would select.",
        )
        model = self._model()
        self._num_levels = int(getattr(model, "num_levels", 0)) if hasattr(model, "scale_for_level") else 0
        self.c_scale: ViewerElement
        if self._num_levels:
            # discrete granularity levels (binary-gaussian): a level selector instead of the continuous scale
            self.c_scale = ViewerDropdown(
                "Level",
                level_label(0, self._num_levels),
                [level_label(level, self._num_levels) for level in range(self._num_levels)],
                cb_hook=self._guarded(self._on_slider),
                hint="Granularity of what a click selects: every Gaussian whose code shares the clicked pixel's "
                "code prefix at this level (level 1: coarsest, whole objects).",
            )
        else:
            self.c_scale = ViewerSlider(
                "Scale",
                DEFAULT_SCALE,
                0.0,
                1.0,
                0.01,
                cb_hook=self._guarded(self._on_slider),
                hint="3D size of what a click selects: 0 = smallest parts, 1 = whole objects / scene "
                "(quantile of the training masks' 3D scales).",
            )
        self.d_threshold = ViewerSlider(
            "Threshold",
            0.75,
            0.0,
            1.0,
            0.01,
            cb_hook=self._guarded(self._on_slider),
            hint="Affinity a Gaussian needs to be selected: lower selects more.",
        )
        self.e_undo = ViewerButton("Undo click", cb_hook=self._guarded(self._on_undo))
        self.f_reset = ViewerButton("Reset selection", cb_hook=self._guarded(self._on_reset))
        self.g_display = ViewerDropdown(
            "Display",
            DISPLAY_HIGHLIGHT,
            DISPLAY_MODES,
            hint="How the selection shows in the RGB output. The 'selection', 'affinity' and 'clusters' "
            "output types (Render Options > Output type) show the masks themselves.",
        )
        self.h_decompose = ViewerButton("Decompose scene", cb_hook=self._guarded(self._on_decompose))
        self.i_export = ViewerButton("Export selection (.ply)", cb_hook=self._guarded(self._on_export))
        self.j_export_path = ViewerText(
            "Exported to", "", hint="The last .ply written (ns-export gaussian-splat format)."
        )
        self.viewer_control = ViewerControl()

        # interaction state (read by the render thread under the train lock)
        self.clicks: List[Click] = []
        self.selection: Optional[Selection] = None
        self.history: List[_Snapshot] = []
        self.decomposition: Optional[_Decomposition] = None
        self.last_export: Optional[Path] = None
        self.last_message: str = START_HINT
        self.camera_override: Optional[Cameras] = None
        """Tests / scripts: clicks are read on this camera instead of the viewer client's."""
        self.run_dir: Optional[Path] = None
        """Where ``segments/`` goes (default: the viewer's run folder, else the working directory)."""
        self.overlay_all_renders = False
        """Add the viewer outputs to every eval render, not only the viewer's (tests, benchmarks)."""
        self.run_async = True
        """Run the clustering of *Decompose* in a worker thread (False: inline, for tests)."""
        self._pointer_registered = False
        self._features_seen: Optional[bool] = None
        self._worker: Optional[threading.Thread] = None

        if model is not None and hasattr(model, "viewer_hook"):
            model.viewer_hook = self.add_outputs

    # ---- plumbing ------------------------------------------------------------------------------------------
    def _model(self) -> Optional["SegSplatModel"]:
        pipeline = self._pipeline_ref()
        return None if pipeline is None else pipeline.model

    def _viewer(self):
        return getattr(self.viewer_control, "viewer", None)

    def _train_lock(self):
        viewer = self._viewer()
        lock = getattr(viewer, "train_lock", None) if viewer is not None else None
        return lock if lock is not None else contextlib.nullcontext()

    def _rerender(self) -> None:
        viewer = self._viewer()
        if viewer is not None and hasattr(viewer, "_trigger_rerender"):
            viewer._trigger_rerender()

    def say(self, message: str, warning: bool = False) -> None:
        """Show a message in the Status element (and, for warnings, as a viewer notification)."""
        self.last_message = message
        self.a_status.value = message
        server = getattr(self.viewer_control, "viser_server", None)
        if warning and server is not None:
            try:
                for client in server.get_clients().values():
                    client.add_notification("Segmentation", message.replace("**", "").replace("`", ""),
                                            auto_close=5000, color="yellow")
            except Exception:  # noqa: BLE001 - a notification is a nicety; the status already says it
                pass

    def _guarded(self, callback: Callable[..., None]) -> Callable[..., None]:
        """Wrap a callback so that every failure becomes a status message instead of a traceback."""

        def run(*args: Any) -> None:
            try:
                callback(*args)
            except PromptError as error:
                self.say(str(error), warning=True)
            except Exception as error:  # noqa: BLE001 - shown in the viewer, logged as one line
                CONSOLE.print(f"[segmentation] {type(error).__name__}: {error}", style="bold yellow")
                self.say(f"Error: {type(error).__name__}: {error}", warning=True)

        return run

    @contextlib.contextmanager
    def _eval_model(self):
        """Segment with the model in eval mode (during ns-train it is in train mode between steps)."""
        model = self._model()
        assert model is not None
        was_training = model.training
        model.eval()
        try:
            yield model
        finally:
            model.train(was_training)

    def _segmenter(self) -> Segmenter:
        model = self._model()
        if model is None:
            raise PromptError("no model loaded")
        if not model.has_features:
            raise PromptError(NO_FEATURES_HINT)
        return Segmenter(model, threshold=float(self.d_threshold.value))

    @property
    def _level(self) -> Optional[int]:
        """The chosen 0-based level (level selector), None with the continuous scale slider."""
        if not self._num_levels:
            return None
        return [level_label(level, self._num_levels) for level in range(self._num_levels)].index(self.c_scale.value)

    @property
    def _scale(self) -> float:
        """The segmenter's scale: the slider's value, or a scale inside the chosen level's range."""
        level = self._level
        if level is None:
            return float(self.c_scale.value)
        model = self._model()
        scale = model.scale_for_level(level) if model is not None else None
        if scale is None:
            raise PromptError(
                f"{self.c_scale.value} received too few of the training masks to be offered (the model gives it "
                "no range of scales): choose another level"
            )
        return float(scale)

    def _scale_text(self) -> str:
        """How the current scale is shown in messages: 'scale 0.62' or 'level 2 of 3'."""
        level = self._level
        return f"scale {self._scale:.2f}" if level is None else f"level {level + 1} of {self._num_levels}"

    @property
    def _threshold(self) -> float:
        return float(self.d_threshold.value)

    # ---- clicks ----------------------------------------------------------------------------------------------
    def _on_mode(self, _element=None) -> None:
        mode = self.b_click_mode.value
        if getattr(self.viewer_control, "viser_server", None) is None:
            return  # not in a viewer (tests call the click handler directly)
        if mode == MODE_OFF:
            if self._pointer_registered:
                self.viewer_control.unregister_pointer_cb()
            self._pointer_registered = False
            self.say("Click mode off: clicks move the camera again.")
            return
        if not self._pointer_registered:
            self.viewer_control.register_pointer_cb("click", self.on_click, removed_cb=self._on_pointer_removed)
            self._pointer_registered = True
        model = self._model()
        if model is not None and not model.has_features:
            self.say(NO_FEATURES_HINT, warning=True)
        elif mode == MODE_ADD:
            self.say("Click an object to **add** it to the selection.")
        else:
            self.say("Click an object to **subtract** it from the selection.")

    def _on_pointer_removed(self) -> None:
        self._pointer_registered = False

    def _click_image_size(self, aspect: float) -> Tuple[int, int]:
        viewer = self._viewer()
        long_side = DEFAULT_CLICK_LONG_SIDE
        panel = getattr(viewer, "control_panel", None) if viewer is not None else None
        if panel is not None:
            long_side = int(getattr(panel, "max_res", long_side))
        if aspect >= 1.0:
            return max(1, int(round(long_side / aspect))), long_side
        return long_side, max(1, int(round(long_side * aspect)))

    def click_camera(self) -> Cameras:
        """The camera of the current view, at the resolution a click is read on."""
        if self.camera_override is not None:
            return self.camera_override
        server = getattr(self.viewer_control, "viser_server", None)
        if server is None:
            raise PromptError("the viewer is not running")
        clients = server.get_clients()
        if not clients:
            raise PromptError("no browser is connected to the viewer")
        aspect = float(next(iter(clients.values())).camera.aspect)
        height, width = self._click_image_size(aspect)
        camera = self.viewer_control.get_camera(height, width)
        if camera is None:
            raise PromptError("no browser is connected to the viewer")
        return camera

    @staticmethod
    def click_pixel(click: ViewerClick, camera: Cameras) -> Tuple[int, int]:
        """``ViewerClick.screen_pos`` (OpenCV convention, normalised to [0, 1]) -> pixel (x, y) of ``camera``."""
        width, height = int(camera.width.item()), int(camera.height.item())
        sx, sy = float(click.screen_pos[0]), float(click.screen_pos[1])
        if not (0.0 <= sx <= 1.0 and 0.0 <= sy <= 1.0):
            raise PromptError(f"click at screen position ({sx:.3f}, {sy:.3f}) is outside the render")
        return min(int(sx * width), width - 1), min(int(sy * height), height - 1)

    def on_click(self, click: ViewerClick) -> None:
        """The pointer callback (viser thread): one click -> one re-segmentation -> re-render."""
        self._guarded(self.handle_click)(click)
        self._rerender()

    def handle_click(self, click: ViewerClick) -> None:
        mode = self.b_click_mode.value
        if mode == MODE_OFF:
            self.say("Click mode is Off: choose Add or Subtract first.", warning=True)
            return
        positive = mode == MODE_ADD
        with self._train_lock():
            segmenter = self._segmenter()
        camera = self.click_camera()
        pixel = self.click_pixel(click, camera)
        scale, threshold = self._scale, self._threshold
        if not positive and not any(c.positive for c in self.clicks):
            self.say("Nothing to subtract from yet: add an object with a positive click first.", warning=True)
            return
        new_click = Click(camera.to("cpu"), pixel, positive)
        if positive:
            # the new click alone: on background it is rejected (and not stored); as the first click it is the answer
            with self._train_lock(), self._eval_model():
                probe = segmenter.click(camera, [pixel], scale, threshold)
            if probe.scores is None:
                self.say(probe.message or "nothing to select there", warning=True)
                return
            if not self.clicks:
                self._push_history()
                self.clicks.append(new_click)
                self._set_selection(probe)
                return
        self._push_history()
        self.clicks.append(new_click)
        with self._train_lock(), self._eval_model():
            selection = self.resegment(segmenter)
        self._set_selection(selection)

    def resegment(self, segmenter: Optional[Segmenter] = None) -> Selection:
        """The selection of the stored clicks at the current scale and threshold.

        Positive clicks are grouped by camera and each group is one ``Segmenter.click`` with that camera's
        negative clicks, so with one camera (the usual case) this *is* ``Segmenter.click``. With several cameras
        the groups are united (the segmenter's max-over-prompts semantics) and every camera's negative clicks are
        subtracted from the union.
        """
        segmenter = segmenter or self._segmenter()
        scale, threshold = self._scale, self._threshold
        groups: Dict[Tuple[float, ...], Tuple[Cameras, List[Tuple[int, int]], List[Tuple[int, int]]]] = {}
        for click in self.clicks:
            key = _camera_key(click.camera)
            if key not in groups:
                groups[key] = (click.camera, [], [])
            groups[key][1 if click.positive else 2].append(click.pixel)
        n = segmenter.num_gaussians
        device = segmenter.model.device
        mask = torch.zeros(n, dtype=torch.bool, device=device)
        scores: Optional[torch.Tensor] = None
        messages = []
        for camera, positives, negatives in groups.values():
            if not positives:
                continue
            selection = segmenter.click(camera, positives, scale, threshold, negative_pixels=negatives)
            mask |= selection.gaussian_mask
            if selection.scores is not None:
                prompt_scores = selection.scores.float()
                scores = prompt_scores if scores is None else torch.maximum(scores, prompt_scores)
            if selection.message:
                messages.append(selection.message)
        if len(groups) > 1:
            for camera, _, negatives in groups.values():
                if negatives:
                    mask &= ~segmenter.click(camera, negatives, scale, threshold).gaussian_mask
        if not any(c.positive for c in self.clicks):
            return Selection(mask, None, "no click yet: click on an object to select it")
        message = None if bool(mask.any()) else (messages[0] if messages else f"no Gaussian passes threshold {threshold:.2f}: lower it")
        return Selection(mask, scores, message)

    def _set_selection(self, selection: Selection) -> None:
        self.selection = selection
        if selection.empty:
            self.say(f"Nothing selected: {selection.message or 'empty selection'}.", warning=True)
            return
        model = self._model()
        total = model.num_points if model is not None else selection.gaussian_mask.numel()
        positives = sum(c.positive for c in self.clicks)
        negatives = len(self.clicks) - positives
        self.say(
            f"Selected **{selection.count}** of {total} Gaussians "
            f"({positives} add / {negatives} subtract click(s), {self._scale_text()}, "
            f"threshold {self._threshold:.2f})."
        )

    def _push_history(self) -> None:
        self.history.append(_Snapshot(list(self.clicks), self.selection, self._scale, self._threshold))
        del self.history[:-50]

    # ---- sliders, undo, reset --------------------------------------------------------------------------------
    def _on_slider(self, _element=None) -> None:
        # runs under the viewer's train lock (nerfstudio wraps element callbacks); one re-segmentation
        if not self.clicks:
            model = self._model()
            if model is not None and not model.has_features:
                self.say(NO_FEATURES_HINT, warning=True)
            else:
                self.say(
                    f"{self._scale_text().capitalize()}, threshold {self._threshold:.2f}: no click yet, nothing to "
                    "re-segment. "
                    "Click an object first (Click mode: Add).",
                    warning=True,
                )
            return
        segmenter = self._segmenter()
        with self._eval_model():
            self._set_selection(self.resegment(segmenter))

    def _on_undo(self, _element=None) -> None:
        if not self.history:
            self.say("Nothing to undo.", warning=True)
            return
        snapshot = self.history.pop()
        self.clicks = list(snapshot.clicks)
        if snapshot.selection is not None and (snapshot.scale, snapshot.threshold) != (self._scale, self._threshold):
            with self._eval_model():
                self.selection = self.resegment() if self.clicks else None
        else:
            self.selection = snapshot.selection
        if self.selection is None or not self.clicks:
            self.selection = None
            self.say("Undone: no click left. " + START_HINT)
        else:
            self._set_selection(self.selection)

    def _on_reset(self, _element=None) -> None:
        if self.clicks or self.selection is not None:
            self._push_history()
        self.clicks = []
        self.selection = None
        self.decomposition = None
        self.say("Selection reset (Undo brings it back). " + START_HINT)

    # ---- decompose -----------------------------------------------------------------------------------------------
    def _on_decompose(self, _element=None) -> None:
        if self._worker is not None and self._worker.is_alive():
            self.say("Decomposition is already running...")
            return
        model = self._model()
        if model is None or not model.has_features:
            self.say(NO_FEATURES_HINT, warning=True)
            return
        scale = Segmenter.check_scale(self._scale)
        where = self._scale_text()
        num_points = model.num_points
        labels_at_scale = getattr(model, "labels_at_scale", None)
        # discrete labels (binary codes) are the decomposition itself; features are clustered outside the lock
        fixed_labels = labels_at_scale(scale).detach().cpu() if callable(labels_at_scale) else None
        features = None if fixed_labels is not None else model.decomposition_features(scale).detach().clone()
        self.say(f"Decomposing the scene at {where} ({num_points} Gaussians)...")

        def work() -> None:
            from segsplat_ns.decompose import decompose

            try:
                labels = fixed_labels if fixed_labels is not None else decompose(features).cpu()
                num = int(labels.max()) + 1 if labels.numel() else 0
                colors = segment_palette(max(num, 1))[labels.clamp_min(0)]
                self.decomposition = _Decomposition(scale, num_points, labels, colors, num)
                self.say(
                    f"Scene decomposed into **{num}** segments at {where}: "
                    "choose the output type **clusters** to see them."
                )
            except Exception as error:  # noqa: BLE001
                CONSOLE.print(f"[segmentation] decomposition failed: {type(error).__name__}: {error}", style="bold yellow")
                self.say(f"Decomposition failed: {type(error).__name__}: {error}", warning=True)
            self._rerender()

        if self.run_async:
            self._worker = threading.Thread(target=work, name="segsplat-decompose", daemon=True)
            self._worker.start()
        else:
            work()

    def wait(self, timeout: Optional[float] = None) -> None:
        """Wait for a running decomposition (tests, scripts)."""
        if self._worker is not None:
            self._worker.join(timeout)

    # ---- export ---------------------------------------------------------------------------------------------------
    def export_dir(self) -> Path:
        if self.run_dir is not None:
            return Path(self.run_dir) / "segments"
        viewer = self._viewer()
        log_filename = getattr(viewer, "log_filename", None) if viewer is not None else None
        if log_filename is not None:
            return Path(log_filename).parent / "segments"
        return Path.cwd() / "segments"

    def _on_export(self, _element=None) -> Optional[Path]:
        from segsplat_ns.export import write_splat_ply

        if self.selection is None or self.selection.empty:
            self.say("Nothing to export: the selection is empty. Click an object first (Click mode: Add).", warning=True)
            return None
        model = self._model()
        assert model is not None
        mask = self.selection.gaussian_mask
        if mask.numel() != model.num_points:
            self.say("The scene changed since this selection was made: click again before exporting.", warning=True)
            return None
        folder = self.export_dir()
        folder.mkdir(parents=True, exist_ok=True)
        index = 0
        while (folder / f"selection_{index}.ply").exists():
            index += 1
        path = folder / f"selection_{index}.ply"
        count = write_splat_ply(path, model.gauss_params, mask.cpu(), sh_degree_colors=model.config.sh_degree > 0)
        self.last_export = path
        self.j_export_path.value = str(path)
        self.say(f"Exported **{count}** Gaussians to `{path}`.")
        return path

    # ---- render outputs --------------------------------------------------------------------------------------------
    def _sync_status(self, model: "SegSplatModel") -> None:
        has_features = model.has_features
        if has_features == self._features_seen:
            return
        self._features_seen = has_features
        if not has_features:
            self.say(NO_FEATURES_HINT)
        elif self.last_message == NO_FEATURES_HINT:
            self.say("Segmentation features are ready. " + START_HINT)

    def add_outputs(self, camera: Cameras, crop_ids: Optional[torch.Tensor], outputs: Dict[str, Any]) -> Dict[str, Any]:
        """``SegSplatModel.get_outputs`` hook (eval only): selection / affinity / clusters outputs and the
        highlighted RGB, for the viewer's render threads."""
        if not (self.overlay_all_renders or _in_viewer_render_thread()):
            return outputs
        model = self._model()
        if model is None:
            return outputs
        self._sync_status(model)
        if not model.has_features or "rgb" not in outputs:
            return outputs
        rgb = outputs["rgb"]
        height, width = rgb.shape[0], rgb.shape[1]
        n = model.num_points
        selection = self.selection
        mask = None
        scores = None
        if selection is not None and selection.gaussian_mask.numel() == n and not selection.empty:
            mask = selection.gaussian_mask.to(model.device)
            if selection.scores is not None and selection.scores.numel() == n:
                scores = selection.scores.to(model.device).float()
        decomposition = self.decomposition
        if decomposition is not None and decomposition.num_points != n:
            decomposition = None
        zeros1 = rgb.new_zeros(height, width, 1)
        if mask is None and decomposition is None:
            outputs["selection"] = zeros1
            outputs["affinity"] = zeros1
            outputs["clusters"] = rgb.new_zeros(height, width, 3)
            return outputs
        colors = torch.zeros(n, 5, device=model.device)
        if mask is not None:
            colors[:, 0] = mask.float()
            if scores is not None:
                colors[:, 1] = scores.float().clamp(0.0, 1.0)
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
        if mask is not None:
            display = self.g_display.value
            if display == DISPLAY_HIGHLIGHT:
                tint = torch.tensor(HIGHLIGHT_TINT, device=rgb.device, dtype=rgb.dtype)
                selected = (1.0 - TINT_WEIGHT) * rgb + TINT_WEIGHT * tint
                outputs["rgb"] = weight * selected + (1.0 - weight) * DIM_FACTOR * rgb
            elif display == DISPLAY_ONLY:
                subset = mask if crop_ids is None else mask & crop_ids.to(mask.device).bool()
                outputs["rgb"] = model.render_rgb_subset(camera, subset)
        return outputs
