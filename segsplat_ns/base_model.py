"""The base every segsplat method builds on: what segmentation adds to splatfacto, once for all methods.

- a per-Gaussian feature in ``gauss_params`` (so densification, pruning and checkpoint loading carry it) with
  an optimizer group of the same name;
- a two-stage schedule inside one ``ns-train`` run: RGB reconstruction for ``rgb_steps`` steps, then the
  method's features with the geometry frozen (no densification, no gradient reaches geometry or colour); a
  method with ``freezes_geometry = False`` instead trains its features jointly with the RGB splat from
  ``rgb_steps`` on (reconstruction loss, densification and geometry gradients continue);
- ``finish_training``: what a method computes from the trained model and the training views after the last
  step, before the final checkpoint;
- ``init_from``: start from an existing splatfacto run and skip stage one;
- ``render_features``: any per-Gaussian vectors alpha-composited through the frozen geometry;
  ``render_pixels``: the same at a few pixels only (what a click reads), with the projection kept per camera.

The CPU-safe splatfacto underneath is :class:`segsplat_ns.compat.splatfacto.CpuSplatfactoModel`; the inference
hooks a method supplies are declared by :class:`segsplat_ns.contract.MethodContract`. A method subclass adds only
its paper: ``initial_features``, ``feature_colors`` (what is rendered), ``feature_loss_dict`` (its loss),
``populate_method_modules`` / ``method_param_groups`` (its small heads) and the contract's hooks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Dict, List, Literal, Optional, Tuple, Type, Union

import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.models.splatfacto import SplatfactoModelConfig
from nerfstudio.utils.rich_utils import CONSOLE
from torch.nn import Parameter

from segsplat_ns.compat.splatfacto import GEOMETRY_KEYS, CpuSplatfactoModel, load_splatfacto_gaussians, sh_degree_of
from segsplat_ns.contract import MethodContract, TrainingViews

NUM_SCALE_QUANTILES = 1001


@dataclass
class SegSplatModelConfig(SplatfactoModelConfig):
    """Splatfacto plus a per-Gaussian segmentation feature trained in a second stage."""

    _target: Type = field(default_factory=lambda: SegSplatModel)
    feature_dim: int = 32
    """Width D of the per-Gaussian segmentation feature."""
    rgb_steps: int = 15000
    """Stage one: splatfacto RGB steps; after them the geometry freezes and only features train (not with init-from)."""
    init_from: Optional[Path] = None
    """A splatfacto run (config.yml, nerfstudio_models/ or step-*.ckpt) whose Gaussians replace stage one."""
    preset: Literal["paper", "segsplat"] = "segsplat"
    """Fills the fields left unset: the published method ("paper") or ours ("segsplat"); docs/<method>.md lists both."""

    presets: ClassVar[Dict[str, Dict[str, Any]]] = {}
    """Per preset, the value of every preset-controlled field (a field whose default is None); empty: one definition."""

    def __post_init__(self) -> None:
        if self.init_from is not None:
            self.init_from = Path(self.init_from)

    def resolve_preset(self) -> Dict[str, Any]:
        """Fill each preset-controlled field left None from ``presets[preset]`` (a value given on the command line
        wins); returns what was filled. Called when the model is built, not in ``__post_init__``: nerfstudio's
        command line copies the registered config's values, so a filled-in default could not be replaced by
        ``--pipeline.model.preset``."""
        if not self.presets:
            return {}
        if self.preset not in self.presets:
            raise ValueError(f"unknown preset {self.preset!r}: choose one of {', '.join(sorted(self.presets))}")
        filled = {}
        for name, value in self.presets[self.preset].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
                filled[name] = value
        return filled



class SegSplatModel(CpuSplatfactoModel, MethodContract):
    """Splatfacto with a per-Gaussian feature head; method subclasses define what it means."""

    config: SegSplatModelConfig
    feature_key = "seg_features"
    freezes_geometry: ClassVar[bool] = True
    """Two stages (features trained on the frozen RGB splat) or, False, features trained jointly with it."""
    viewer_hook: Optional[Callable[[Cameras, Optional[torch.Tensor], Dict[str, Any]], Dict[str, Any]]] = None
    """Set by the pipeline's viewer controls (:mod:`segsplat_ns.viewer`): adds the selection outputs to eval renders."""

    # ---- construction -------------------------------------------------------------------------------
    def populate_modules(self) -> None:
        filled = self.config.resolve_preset()
        if filled:
            CONSOLE.log(f"preset {self.config.preset}: " + ", ".join(f"{k}={v}" for k, v in filled.items()))
        self._loaded_gaussians: Optional[Dict[str, torch.Tensor]] = None
        self._pixel_state: Optional[tuple] = None  # what render_pixels' kept geometry and projections belong to
        if self.config.init_from is not None:
            self._loaded_gaussians = load_splatfacto_gaussians(self.config.init_from)
            self.config.sh_degree = sh_degree_of(self._loaded_gaussians)
            # stage one is skipped: no densification at all on a borrowed splat
            self.config.stop_split_at = 0
            count = self._loaded_gaussians["means"].shape[0]
            CONSOLE.log(f"Loaded {count} Gaussians from {self.config.init_from}; skipping stage one")
        elif self.freezes_geometry:
            # densification must end before the geometry freezes: it needs the RGB gradients
            self.config.stop_split_at = min(self.config.stop_split_at, self.config.rgb_steps)
        super().populate_modules()
        self._loaded_gaussians = None
        # Persisted with the checkpoint so ns-eval / ns-viewer / segment know the state without the dataset.
        self.register_buffer("scale_quantiles", torch.zeros(NUM_SCALE_QUANTILES))
        self.register_buffer("features_trained", torch.tensor(False))
        self.populate_method_modules()

    def initial_gaussian_params(self) -> Dict[str, torch.Tensor]:
        if self._loaded_gaussians is not None:
            return {key: self._loaded_gaussians[key] for key in GEOMETRY_KEYS}
        return super().initial_gaussian_params()

    def extra_gaussian_params(self, num_points: int) -> Dict[str, torch.Tensor]:
        return {self.feature_key: self.initial_features(num_points)}

    # ---- what a method provides ----------------------------------------------------------------------
    def populate_method_modules(self) -> None:
        """Build the method's small modules (e.g. SAGA's scale gate)."""

    def initial_features(self, num_points: int) -> torch.Tensor:
        return torch.randn(num_points, self.config.feature_dim) * 0.1

    def feature_colors(self) -> torch.Tensor:
        """The per-Gaussian vectors rendered as the feature map, [N, C]."""
        return self.gauss_params[self.feature_key]

    def feature_loss_dict(self, outputs: Dict[str, torch.Tensor], batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        raise NotImplementedError

    def method_param_groups(self) -> Dict[str, List[Parameter]]:
        """Optimizer groups of the method's non-per-Gaussian modules."""
        return {}

    feature_stage_steps: ClassVar[Optional[int]] = None
    """A feature stage of fixed length whatever ``--max-num-iterations`` says (a method that computes its features
    in ``finish_training`` instead of training them); None: as many steps as the run has."""

    def finish_training(self, views: TrainingViews) -> None:
        """After the last training step, before the final checkpoint: derive what inference needs from the trained
        model and the training views (e.g. an association of the views' masks). Default: nothing."""

    # ---- stages ------------------------------------------------------------------------------------
    @property
    def feature_start_step(self) -> int:
        return 0 if self.config.init_from is not None else self.config.rgb_steps

    @property
    def in_feature_stage(self) -> bool:
        return self.step >= self.feature_start_step

    @property
    def has_features(self) -> bool:
        return bool(self.features_trained)

    def get_gaussian_param_groups(self) -> Dict[str, List[Parameter]]:
        return {name: [self.gauss_params[name]] for name in self.gauss_params.keys()}

    def get_param_groups(self) -> Dict[str, List[Parameter]]:
        groups = super().get_param_groups()
        groups.update(self.method_param_groups())
        return groups

    def load_state_dict(self, dict, **kwargs):  # type: ignore[override]
        super().load_state_dict(dict, **kwargs)
        # a loaded model is past stage one (splatfacto likewise sets step 30000 for its SH schedule)
        self.step = max(self.step, self.feature_start_step)

    def step_post_backward(self, step):
        if step >= self.strategy.refine_stop_iter:
            return  # geometry frozen: no densification statistics exist (and none are needed)
        super().step_post_backward(step)

    # ---- rendering -----------------------------------------------------------------------------------
    feature_geometry_keys: ClassVar[Tuple[str, ...]] = ()
    """Per-Gaussian parameters besides the RGB geometry that :meth:`feature_geometry` reads (e.g. a segmentation
    opacity): the pixel query's kept geometry is dropped when they change."""

    def feature_geometry(self, crop_ids: Optional[torch.Tensor], detach: bool) -> Dict[str, torch.Tensor]:
        """The activated geometry feature maps are rendered through. Default: the RGB splat's (``geometry``)."""
        return self.geometry(crop_ids, detach)

    def render_features(
        self,
        colors: torch.Tensor,
        camera: Cameras,
        crop_ids: Optional[torch.Tensor] = None,
        background: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Alpha-composite any per-Gaussian vectors [N, C] through the frozen geometry: ([H, W, C], [H, W, 1])."""
        viewmat, K, width, height = self.camera_setup(camera, 1)
        # joint training lets the feature loss reach the geometry; otherwise it is frozen here
        geometry = self.feature_geometry(crop_ids, detach=self.freezes_geometry or not self.training)
        if crop_ids is not None:
            colors = colors[crop_ids]
        backgrounds = None if background is None else background[None]
        render, alpha, _ = self.rasterize_view(
            colors, viewmat, K, width, height, geometry, render_mode="RGB", sh_degree=None, backgrounds=backgrounds
        )
        return render[0], alpha[0]

    @torch.no_grad()
    def render_pixels(self, colors: torch.Tensor, camera: Cameras, pixels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """What :meth:`render_features` gives at pixels [P, 2] (x, y), computed for those pixels only:
        ([P, C], [P, 1]) (:func:`~segsplat_ns.rendering.pixel_query.render_pixels`; inference, no gradients).

        The activated geometry and the cull's grid are kept while the Gaussians stay, the projected tiles while the
        camera stays too, so a second click in the same tile only composites."""
        from segsplat_ns.rendering.pixel_query import PixelCache, render_pixels

        viewmat, K, width, height = self.camera_setup(camera, 1)
        keys = GEOMETRY_KEYS + self.feature_geometry_keys
        state = tuple((p.data_ptr(), p._version, p.shape[0]) for p in (self.gauss_params[k] for k in keys))
        if self._pixel_state != state:
            self._pixel_state = state
            self._pixel_geometry = self.feature_geometry(None, detach=True)
            self._pixel_cache = PixelCache()
        geometry = self._pixel_geometry
        return render_pixels(
            geometry["means"], geometry["quats"], geometry["scales"], geometry["opacities"], colors.detach(),
            viewmat[0], K[0], width, height, pixels.to(self.device), near_plane=0.01, far_plane=1e10,
            rasterize_mode=self.config.rasterize_mode, cache=self._pixel_cache,
        )  # fmt: skip

    @torch.no_grad()
    def project_centres(self, camera: Cameras) -> Tuple[torch.Tensor, torch.Tensor]:
        """Every Gaussian centre seen from a camera: its pixel (x, y) long [N, 2] (-1 behind the camera; may lie
        outside the image) and its depth z [N]."""
        viewmat, K, _, _ = self.camera_setup(camera, 1)
        cam = self.means.detach() @ viewmat[0, :3, :3].T + viewmat[0, :3, 3]
        z = cam[:, 2]
        uv = (cam @ K[0].T)[:, :2] / z.clamp_min(1e-8)[:, None]
        pixels = torch.where(z[:, None] > 0, torch.floor(uv), torch.full_like(uv, -1)).long()
        return pixels, z

    def get_outputs(self, camera: Cameras) -> Dict[str, Union[torch.Tensor, List]]:
        if not isinstance(camera, Cameras):
            print("Called get_outputs with not a camera")
            return {}
        crop_ids = None
        if self.crop_box is not None and not self.training:
            crop_ids = self.crop_box.within(self.means).squeeze()
            if crop_ids.sum() == 0:
                return self.get_empty_outputs(int(camera.width.item()), int(camera.height.item()), self.background_color)

        outputs: Dict[str, Any] = {}
        feature_stage = self.in_feature_stage
        if not (self.training and feature_stage and self.freezes_geometry):
            # outside training the trained state is rendered: every SH degree. A loaded run's step is only its
            # feature start (0 for a joint method), at which the SH warm-up would render degree 0 alone
            final = not self.training or (feature_stage and self.freezes_geometry)
            outputs.update(self.render_rgb(camera, crop_ids, final=final))
        if (self.training and feature_stage) or (not self.training and self.has_features):
            outputs.update(self.segmentation_outputs(camera, crop_ids))
        if not self.training and self.viewer_hook is not None:
            outputs = self.viewer_hook(camera, crop_ids, outputs)
        return outputs

    @torch.no_grad()
    def render_rgb_subset(self, camera: Cameras, gaussian_mask: torch.Tensor) -> torch.Tensor:
        """RGB of only the masked Gaussians over the background, [H, W, 3] (for previews of a selection)."""
        was_training = self.training
        self.eval()
        try:
            return self.render_rgb(camera.to(self.device), gaussian_mask.to(self.device), final=True)["rgb"]
        finally:
            self.train(was_training)

    def segmentation_outputs(self, camera: Cameras, crop_ids: Optional[torch.Tensor]) -> Dict[str, torch.Tensor]:
        """The method's rendered feature maps (training and viewer). Default: the feature map itself."""
        features, alpha = self.render_features(self.feature_colors(), camera, crop_ids)
        return {"features": features, "feature_alpha": alpha}

    # ---- losses and metrics ----------------------------------------------------------------------------
    def get_metrics_dict(self, outputs, batch) -> Dict[str, torch.Tensor]:
        if self.training and self.in_feature_stage and self.freezes_geometry:
            return {"gaussian_count": self.num_points}
        return super().get_metrics_dict(outputs, batch)

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> Dict[str, torch.Tensor]:
        if self.training and self.in_feature_stage:
            if not bool(self.features_trained):
                self.features_trained.fill_(True)
            if self.freezes_geometry:
                return self.feature_loss_dict(outputs, batch)
            return {**super().get_loss_dict(outputs, batch, metrics_dict), **self.feature_loss_dict(outputs, batch)}
        return super().get_loss_dict(outputs, batch, metrics_dict)
