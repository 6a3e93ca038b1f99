"""The segmentation panel of nerfstudio's web viewer: :class:`SegmentationControls`.

:class:`SegmentationControls` is owned by :class:`~segsplat_ns.pipeline.SegSplatPipeline` (attribute
``segmentation``). nerfstudio's viewer scrapes the pipeline's module tree for ``ViewerElement`` and
``ViewerControl`` objects (``nerfstudio/viewer/utils.py::parse_object``, in ``dir()`` order, i.e. alphabetical
by attribute name), so the elements below are attributes with ``a_``..``n_`` prefixes and appear, in this
order, in the folder *Custom Elements / segmentation* of the Control tab:

====================  =================================================================================
Status                what happened last (also sent as a viewer notification when it is a warning)
Click mode            Off / Add (positive click) / Subtract (negative click): registers
                      ``ViewerControl.register_pointer_cb("click")``
Scale, Threshold      re-segment from the stored clicks (and re-render). For a model whose ``granularity`` has
                      discrete levels, *Scale* is a *Level* dropdown instead (``Segmenter.scale_for_level``);
                      for one whose ``wording.uses_threshold`` is False, *Threshold* is disabled
Text prompt, Find     ``Segmenter.text`` of the typed phrase (the run's language features, loaded on the first
                      Find): its selection replaces the clicks (output ``relevancy``). For a model whose
                      ``text_support`` is empty both are hidden and *No text mode* says why
Undo, Reset           undo the last click, text prompt or reset; Undo also undoes a Reset
Display               the selection in the RGB render: highlighted (others dimmed), alone, or not at all
Decompose scene       every Gaussian coloured by its segment at the current scale (``Segmenter.decomposition``,
                      output ``clusters``); pressing it again at another scale recomputes
Export selection      ``<run>/segments/selection_<n>.ply`` (the ``ns-export gaussian-splat`` format)
Exported to           the last path written
====================  =================================================================================

The interaction state (clicks, undo history, selection, decomposition) is a
:class:`~segsplat_ns.viewer.session.SegmentationSession`; the render overlay is
:mod:`segsplat_ns.viewer.overlay`. This module is the nerfstudio/viser side: elements, callbacks, messages,
locks and the worker thread. It reads the model only through the method contract
(:mod:`segsplat_ns.contract`) and :class:`~segsplat_ns.segmenter.Segmenter`.

Threading: element callbacks already run under the viewer's train lock (nerfstudio wraps them and re-renders
afterwards); the pointer callback takes the same lock itself. Each callback holds the lock only for its segmenter
calls; the heavy part of *Decompose* (the clustering) runs in a worker thread without it. Exceptions in callbacks
become status messages, never tracebacks.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
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

from segsplat_ns.contract import Granularity
from segsplat_ns.errors import SegsplatError
from segsplat_ns.segmenter import Click, PromptError, Segmenter, Selection, TextSelection
from segsplat_ns.viewer.overlay import DISPLAY_HIGHLIGHT, DISPLAY_MODES, decomposition_of
from segsplat_ns.viewer.overlay import add_outputs as add_overlay
from segsplat_ns.viewer.session import Decomposition, SegmentationSession, Snapshot

if TYPE_CHECKING:
    from nerfstudio.viewer.viewer import Viewer

    from segsplat_ns.base_model import SegSplatModel
    from segsplat_ns.language.context import LanguageContext

MODE_OFF = "Off"
MODE_ADD = "Add (positive click)"
MODE_SUBTRACT = "Subtract (negative click)"
CLICK_MODES = [MODE_OFF, MODE_ADD, MODE_SUBTRACT]

DEFAULT_SCALE = 0.5
DEFAULT_THRESHOLD = 0.75
DEFAULT_CLICK_LONG_SIDE = 512
"""Long side of the image a click is read on when the viewer's max resolution is unknown."""

START_HINT = "Choose **Click mode: Add**, then click an object in the render."
NO_FEATURES_HINT = (
    "Segmentation features are not trained yet (they train after `--pipeline.model.rgb-steps`): "
    "the controls start working then."
)
SCALE_HINT = (
    "3D size of what a click selects: 0 = smallest parts, 1 = whole objects / scene "
    "(quantile of the training masks' 3D scales)."
)
LEVEL_HINT = "Granularity of what a click selects (level 1: coarsest, whole objects)."
THRESHOLD_HINT = "Affinity a Gaussian needs to be selected: lower selects more."
NO_THRESHOLD_HINT = "This method's scores are the selection itself (0 or 1): the threshold has no effect."
TEXT_HINT = "What to find, e.g. an object's name; press Find. Method: {support}."
NO_TEXT_HINT = "**Text prompts:** this method has no text mode; click objects instead."


def nerfstudio_viewer(control: ViewerControl) -> Optional["Viewer"]:
    """The nerfstudio ``Viewer`` a ``ViewerControl`` is attached to, or None outside a running viewer.

    nerfstudio forces this one probe: ``ViewerControl`` has no public accessor for its viewer and only gains the
    ``viewer`` / ``viser_server`` attributes when nerfstudio's ``Viewer`` calls ``ViewerControl._setup`` (never
    under ns-eval, ns-render or a script that loads the pipeline), so their absence is the only way to tell.
    Everything else the panel needs of the viewer (``viser_server``, ``train_lock``, ``control_panel.max_res``,
    ``log_filename``, ``_trigger_rerender``) is then read from the ``Viewer`` directly.
    """
    return getattr(control, "viewer", None)


def _in_viewer_render_thread() -> bool:
    from nerfstudio.viewer.render_state_machine import RenderStateMachine

    return isinstance(threading.current_thread(), RenderStateMachine)


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


class SegmentationControls(nn.Module):
    """The viewer's segmentation panel. A parameter-free module, so that the viewer finds its elements inside
    the pipeline and the pipeline's state dict is unchanged.

    No property of this class may raise: nerfstudio's ``parse_object`` reads every attribute of it.
    """

    def __init__(self, pipeline: nn.Module) -> None:
        super().__init__()
        # Not submodules: the pipeline owns the model; a weak reference avoids a cycle and state-dict entries.
        self.__dict__["_pipeline_ref"] = weakref.ref(pipeline)
        self.__dict__["_state_lock"] = threading.RLock()
        model = self._model()
        self._granularity: Granularity = model.granularity
        self._uses_threshold: bool = model.wording.uses_threshold

        self.a_status = ViewerMarkdown("Status", START_HINT)
        self.b_click_mode = ViewerDropdown(
            "Click mode",
            MODE_OFF,
            CLICK_MODES,
            cb_hook=self._guarded(self._on_mode),
            hint="Add: a click selects the object under the cursor. Subtract: a click removes what it would select.",
        )
        self.c_scale: ViewerElement
        if self._granularity.discrete:
            # discrete levels: a level selector instead of the continuous scale
            self.c_scale = ViewerDropdown(
                "Level",
                self._level_labels()[0],
                self._level_labels(),
                cb_hook=self._guarded(self._on_slider),
                hint=model.wording.level_hint or LEVEL_HINT,
            )
        else:
            # a method whose clicks select whole instances has no scale to choose: the slider is hidden
            self.c_scale = ViewerSlider(
                "Scale", DEFAULT_SCALE, 0.0, 1.0, 0.01, cb_hook=self._guarded(self._on_slider), hint=SCALE_HINT,
                visible=self._granularity.sized,
            )
        self.d_threshold = ViewerSlider(
            "Threshold",
            DEFAULT_THRESHOLD,
            0.0,
            1.0,
            0.01,
            disabled=not self._uses_threshold,
            cb_hook=self._guarded(self._on_slider),
            hint=THRESHOLD_HINT if self._uses_threshold else NO_THRESHOLD_HINT,
        )
        # text prompts: only for a method that declares a text mode; otherwise a line saying there is none
        self._text_support: str = model.text_support
        has_text = bool(self._text_support)
        self.e_text = ViewerText(
            "Text prompt", "", visible=has_text, hint=TEXT_HINT.format(support=self._text_support or "none")
        )
        self.f_find = ViewerButton("Find", cb_hook=self._guarded(self._on_find), visible=has_text)
        self.g_no_text = ViewerMarkdown("No text mode", NO_TEXT_HINT, visible=not has_text)
        self.h_undo = ViewerButton("Undo click", cb_hook=self._guarded(self._on_undo))
        self.i_reset = ViewerButton("Reset selection", cb_hook=self._guarded(self._on_reset))
        self.j_display = ViewerDropdown(
            "Display",
            DISPLAY_HIGHLIGHT,
            DISPLAY_MODES,
            hint="How the selection shows in the RGB output. The 'selection', 'affinity', 'relevancy' (text "
            "prompts) and 'clusters' output types (Render Options > Output type) show the masks themselves.",
        )
        self.k_decompose = ViewerButton("Decompose scene", cb_hook=self._guarded(self._on_decompose))
        self.l_export = ViewerButton("Export selection (.ply)", cb_hook=self._guarded(self._on_export))
        self.m_export_path = ViewerText(
            "Exported to", "", hint="The last .ply written (ns-export gaussian-splat format)."
        )
        self.viewer_control = ViewerControl()

        self.session = SegmentationSession(self._segmenter, text_segmenter=self._text_segmenter)
        """Clicks, undo history, selection and decomposition (read by the render thread)."""
        self.last_export: Optional[Path] = None
        self.last_message: str = START_HINT
        self.camera_override: Optional[Cameras] = None
        """Tests / scripts: clicks are read on this camera instead of the viewer client's."""
        self.run_dir: Optional[Path] = None
        """Where ``segments/`` goes (default: the viewer's run folder, else the working directory)."""
        self.overlay_all_renders = False
        """Add the viewer outputs to every eval render, not only the viewer's (tests, benchmarks)."""
        self.run_async = True
        """Run the heavy part of *Decompose* in a worker thread (False: inline, for tests)."""
        self._pointer_registered = False
        self._features_seen: Optional[bool] = None
        self._worker: Optional[threading.Thread] = None
        self._language: Optional["LanguageContext"] = None  # built on the first Find, then kept

        model.viewer_hook = self.add_outputs

    # ---- the session's state, as attributes (tests, benchmarks) -------------------------------------------
    @property
    def clicks(self) -> List[Click]:
        return self.session.clicks

    @clicks.setter
    def clicks(self, clicks: List[Click]) -> None:
        self.session.clicks = clicks

    @property
    def selection(self) -> Optional[Selection]:
        return self.session.selection

    @selection.setter
    def selection(self, selection: Optional[Selection]) -> None:
        self.session.selection = selection

    @property
    def history(self) -> List[Snapshot]:
        return self.session.history

    @history.setter
    def history(self, history: List[Snapshot]) -> None:
        self.session.history = history

    @property
    def decomposition(self) -> Optional[Decomposition]:
        return self.session.decomposition

    # ---- plumbing ------------------------------------------------------------------------------------------
    def _model(self) -> Optional["SegSplatModel"]:
        pipeline = self._pipeline_ref()
        return None if pipeline is None else pipeline.model

    def _viewer(self) -> Optional["Viewer"]:
        return nerfstudio_viewer(self.viewer_control)

    def _train_lock(self):
        viewer = self._viewer()
        lock = viewer.train_lock if viewer is not None else None
        return lock if lock is not None else contextlib.nullcontext()

    def _rerender(self) -> None:
        viewer = self._viewer()
        if viewer is not None:
            viewer._trigger_rerender()

    def say(self, message: str, warning: bool = False) -> None:
        """Show a message in the Status element (and, for warnings, as a viewer notification)."""
        self.last_message = message
        self.a_status.value = message
        viewer = self._viewer()
        if warning and viewer is not None:
            try:
                for client in viewer.viser_server.get_clients().values():
                    client.add_notification("Segmentation", message.replace("**", "").replace("`", ""),
                                            auto_close=5000, color="yellow")
            except Exception:  # noqa: BLE001 - a notification is a nicety; the status already says it
                pass

    def _guarded(self, callback: Callable[..., Any]) -> Callable[..., None]:
        """Wrap a callback so that every failure becomes a status message instead of a traceback."""

        def run(*args: Any) -> None:
            try:
                callback(*args)
            except SegsplatError as error:  # a prompt, method or run that cannot answer: its message says why
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
        return Segmenter(model, threshold=self._threshold)

    def _text_segmenter(self) -> Segmenter:
        """A segmenter that answers text prompts: the run's language context attached (built once, on first use).
        Raises the segmenter's own refusal for a method without a text mode before loading anything."""
        segmenter = self._segmenter()
        if self._text_support and self._language is None:
            from segsplat_ns.language.context import language_context

            self._language = language_context(self._pipeline_ref())
        segmenter.language = self._language
        segmenter.check_text_support()
        return segmenter

    # ---- scale / level / threshold -------------------------------------------------------------------------
    def _level_labels(self) -> List[str]:
        return [self._granularity.level_label(level) for level in range(self._granularity.num_levels)]

    def _level(self) -> Optional[int]:
        """The chosen 0-based level (level selector), None with the continuous scale slider."""
        if not self._granularity.discrete:
            return None
        return self._level_labels().index(self.c_scale.value)

    def _prompt_size(self, segmenter: Segmenter) -> Tuple[float, str]:
        """The segmenter's scale (the slider's value, or a scale inside the chosen level's range) and how it is
        shown in messages ('scale 0.62' / 'level 2 of 3'). Raises :class:`PromptError` for a level without a
        range."""
        level = self._level()
        scale = Segmenter.check_scale(float(self.c_scale.value)) if level is None else segmenter.scale_for_level(level)
        return scale, segmenter.describe(scale, level)

    @property
    def _threshold(self) -> float:
        return float(self.d_threshold.value)

    def _threshold_text(self) -> str:
        return f", threshold {self._threshold:.2f}" if self._uses_threshold else ""

    # ---- clicks ----------------------------------------------------------------------------------------------
    def _on_mode(self, _element=None) -> None:
        mode = self.b_click_mode.value
        if self._viewer() is None:
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
        long_side = int(viewer.control_panel.max_res) if viewer is not None else DEFAULT_CLICK_LONG_SIDE
        if aspect >= 1.0:
            return max(1, int(round(long_side / aspect))), long_side
        return long_side, max(1, int(round(long_side * aspect)))

    def click_camera(self) -> Cameras:
        """The camera of the current view, at the resolution a click is read on."""
        if self.camera_override is not None:
            return self.camera_override
        viewer = self._viewer()
        if viewer is None:
            raise PromptError("the viewer is not running")
        clients = viewer.viser_server.get_clients()
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
        with self._train_lock():
            segmenter = self._segmenter()
        camera = self.click_camera()
        pixel = self.click_pixel(click, camera)
        new_click = Click(camera.to("cpu"), pixel, positive=mode == MODE_ADD)
        with self._train_lock(), self._eval_model():
            scale, where = self._prompt_size(segmenter)
            selection = self.session.click(new_click, scale, self._threshold)
        self._show(selection, where)

    def _show(self, selection: Optional[Selection], where: str) -> None:
        """Say what the session's selection now is."""
        if selection is None:
            self.say("Undone: no click left. " + START_HINT)
            return
        if isinstance(selection, TextSelection):
            self._show_text(selection)
            return
        if selection.empty:
            self.say(f"Nothing selected: {selection.message or 'empty selection'}.", warning=True)
            return
        model = self._model()
        total = model.num_points if model is not None else selection.gaussian_mask.numel()
        positives, negatives = self.session.click_counts
        self.say(
            f"Selected **{selection.count}** of {total} Gaussians "
            f"({positives} add / {negatives} subtract click(s), {where}{self._threshold_text()})."
        )

    # ---- text prompts ----------------------------------------------------------------------------------------
    def _on_find(self, _element=None) -> None:
        # runs under the viewer's train lock (nerfstudio wraps element callbacks), like the sliders
        phrase = str(self.e_text.value)
        try:
            with self._eval_model():
                selection = self.session.text(phrase)
        except SegsplatError as error:
            # an empty or unknown phrase, one nothing matches, no text mode, no language features: nothing stored
            unchanged = " The selection is unchanged." if self.session.selection is not None else ""
            self.say(f"{error}{unchanged}", warning=True)
            return
        self._show_text(selection)

    def _show_text(self, selection: TextSelection) -> None:
        """Say what a text prompt selected, with the method's facts about it (votes, relevancy) when it gives them."""
        model = self._model()
        total = model.num_points if model is not None else selection.gaussian_mask.numel()
        facts = selection.facts
        details = []
        if "votes" in facts:
            details.append(f"{facts['votes']} votes")
        if isinstance(facts.get("relevancy"), float):
            details.append(f"relevancy {facts['relevancy']:.2f}")
        about = f" ({', '.join(details)})" if details else ""
        self.say(
            f'Text "{selection.phrase}": selected **{selection.count}** of {total} Gaussians{about}. '
            "Output type **relevancy** shows how well each part matches."
        )

    # ---- sliders, undo, reset --------------------------------------------------------------------------------
    def _on_slider(self, _element=None) -> None:
        # runs under the viewer's train lock (nerfstudio wraps element callbacks); one re-segmentation
        segmenter = self._segmenter()
        scale, where = self._prompt_size(segmenter)
        text = self.session.text_selection
        if text is not None:
            self.say(f'{where.capitalize()}{self._threshold_text()}: the selection is the text prompt '
                     f'"{text.phrase}", which these do not change. They apply to the next click.')
            return
        if not self.session.clicks:
            self.say(
                f"{where.capitalize()}{self._threshold_text()}: no click yet, nothing to re-segment. "
                "Click an object first (Click mode: Add).",
                warning=True,
            )
            return
        with self._eval_model():
            self._show(self.session.resegment(scale, self._threshold), where)

    def _on_undo(self, _element=None) -> None:
        if not self.session.can_undo:
            self.say("Nothing to undo.", warning=True)
            return
        segmenter = self._segmenter()
        scale, where = self._prompt_size(segmenter)
        with self._eval_model():
            self._show(self.session.undo(scale, self._threshold), where)

    def _on_reset(self, _element=None) -> None:
        self.session.reset()
        self.say("Selection reset (Undo brings it back). " + START_HINT)

    # ---- decompose -----------------------------------------------------------------------------------------------
    def _on_decompose(self, _element=None) -> None:
        if self._worker is not None and self._worker.is_alive():
            self.say("Decomposition is already running...")
            return
        segmenter = self._segmenter()
        scale, where = self._prompt_size(segmenter)
        with self._eval_model():
            labels_of = segmenter.decomposition(scale)  # reads the model now, under the lock
        num_points = segmenter.num_gaussians
        token = self.session.begin_decomposition()
        self.say(f"Decomposing the scene at {where} ({num_points} Gaussians)...")

        def work() -> None:
            try:
                decomposition = decomposition_of(scale, labels_of())
                if not self.session.finish_decomposition(token, decomposition):
                    return  # reset while it ran
                self.say(
                    f"Scene decomposed into **{decomposition.num_segments}** segments at {where}: "
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
        if viewer is not None:
            return Path(viewer.log_filename).parent / "segments"
        return Path.cwd() / "segments"

    def _on_export(self, _element=None) -> Optional[Path]:
        from segsplat_ns.export import write_splat_ply

        selection = self.session.selection
        if selection is None or selection.empty:
            self.say("Nothing to export: the selection is empty. Click an object first (Click mode: Add) or Find a "
                     "text prompt.", warning=True)
            return None
        model = self._model()
        assert model is not None
        mask = selection.gaussian_mask
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
        self.m_export_path.value = str(path)
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
        """``SegSplatModel.viewer_hook`` (eval renders): the overlay (:func:`segsplat_ns.viewer.overlay.add_outputs`),
        for the viewer's render threads only, so that ns-eval metrics and ns-render are untouched."""
        if not (self.overlay_all_renders or _in_viewer_render_thread()):
            return outputs
        model = self._model()
        if model is None:
            return outputs
        self._sync_status(model)
        if not model.has_features:
            return outputs
        session = self.session
        return add_overlay(model, camera, crop_ids, outputs, session.selection, session.decomposition,
                              self.j_display.value)


__all__ = ["CLICK_MODES", "MODE_ADD", "MODE_OFF", "MODE_SUBTRACT", "NO_FEATURES_HINT", "START_HINT",
           "SegmentationControls", "ViewerMarkdown", "nerfstudio_viewer"]
