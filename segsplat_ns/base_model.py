"""The splatfacto subclass every segsplat method builds on.

What it adds to splatfacto, once for all methods:
- a per-Gaussian feature in ``gauss_params`` (so densification, pruning and checkpoint loading carry it) with
  an optimizer group of the same name;
- a two-stage schedule inside one ``ns-train`` run: RGB reconstruction for ``rgb_steps`` steps, then the
  method's features with the geometry frozen (no densification, no gradient reaches geometry or colour);
- ``init_from``: start from an existing splatfacto run and skip stage one;
- rendering through :func:`segsplat_ns.rendering.rasterize`, so it runs on CPU tensors too, with no
  ``.cuda()`` calls and LPIPS optional when its weights cannot be downloaded.

A method subclass supplies only what its paper adds: ``feature_colors`` (what per-Gaussian vector is
rendered), ``feature_loss_dict`` (its loss), and the prompt interface used by the segmenter
(``prompt_query``, ``gaussian_scores``, ``decomposition_features``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Type, Union

import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.models.splatfacto import (
    RGB2SH,
    SplatfactoModel,
    SplatfactoModelConfig,
    get_viewmat,
    num_sh_bases,
    random_quat_tensor,
)
from nerfstudio.utils.colors import get_color
from nerfstudio.utils.rich_utils import CONSOLE
from torch.nn import Parameter

from segsplat_ns.compat import make_lpips
from segsplat_ns.rendering import rasterize

GEOMETRY_KEYS = ("means", "scales", "quats", "features_dc", "features_rest", "opacities")
NUM_SCALE_QUANTILES = 1001


@dataclass
class SegSplatModelConfig(SplatfactoModelConfig):
    """Splatfacto plus a per-Gaussian segmentation feature trained in a second stage."""

    _target: Type = field(default_factory=lambda: SegSplatModel)
    feature_dim: int = 32
    """Width D of the per-Gaussian segmentation feature."""
    rgb_steps: int = 15000
    """Stage one: steps of plain splatfacto RGB reconstruction. From this step on the geometry is frozen and only
    the segmentation features (and the method's small heads) train. Ignored with --pipeline.model.init-from."""
    init_from: Optional[Path] = None
    """An existing splatfacto run to start from (its config.yml, its nerfstudio_models/ folder or a step-*.ckpt).
    Its Gaussians are loaded, stage one is skipped and the features train from step 0."""

    def __post_init__(self) -> None:
        if self.init_from is not None:
            self.init_from = Path(self.init_from)


def resolve_checkpoint(path: Path) -> Path:
    """A splatfacto run's latest checkpoint from a config.yml, a nerfstudio_models/ folder or a .ckpt path."""
    path = Path(path)
    if path.is_file() and path.suffix == ".ckpt":
        return path
    folder = path
    if path.is_file() and path.suffix in (".yml", ".yaml"):
        folder = path.parent / "nerfstudio_models"
    elif path.is_dir() and (path / "nerfstudio_models").is_dir():
        folder = path / "nerfstudio_models"
    checkpoints = sorted(folder.glob("step-*.ckpt")) if folder.is_dir() else []
    if not checkpoints:
        raise FileNotFoundError(
            f"--pipeline.model.init-from {path}: no step-*.ckpt found (looked in {folder}). Pass the config.yml "
            "of a finished splatfacto run, its nerfstudio_models/ folder, or a .ckpt file."
        )
    return max(checkpoints, key=lambda p: int(p.stem.split("-")[-1]))


def load_splatfacto_gaussians(path: Path) -> Dict[str, torch.Tensor]:
    """The six splatfacto Gaussian tensors from a checkpoint (``pipeline`` state dict, any prefix)."""
    checkpoint = resolve_checkpoint(path)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    pipeline_state = state.get("pipeline", state)
    gaussians = {}
    for key in GEOMETRY_KEYS:
        matches = [k for k in pipeline_state if k.endswith(f"gauss_params.{key}")]
        if not matches:
            raise ValueError(
                f"{checkpoint} has no '{key}' Gaussian parameter: is it a splatfacto (or segsplat) checkpoint?"
            )
        gaussians[key] = pipeline_state[matches[0]].float()
    return gaussians


class SegSplatModel(SplatfactoModel):
    """Splatfacto with a per-Gaussian feature head; method subclasses define what it means."""

    config: SegSplatModelConfig
    feature_key = "seg_features"
    viewer_hook: Optional[Callable[[Cameras, Optional[torch.Tensor], Dict[str, Any]], Dict[str, Any]]] = None
    """Set by the pipeline's viewer controls (:mod:`segsplat_ns.viewer`): adds the selection outputs to eval renders."""

    # ---- construction -------------------------------------------------------------------------------
    def populate_modules(self) -> None:
        # splatfacto's initialisation, without its `.cuda()` on the seed colours and with LPIPS optional
        initial = None
        if self.config.init_from is not None:
            initial = load_splatfacto_gaussians(self.config.init_from)
            sh_bases = initial["features_rest"].shape[1] + 1
            self.config.sh_degree = int(round(math.sqrt(sh_bases))) - 1
            # stage one is skipped: no densification at all on a borrowed splat
            self.config.stop_split_at = 0
            CONSOLE.log(f"Loaded {initial['means'].shape[0]} Gaussians from {self.config.init_from}; skipping stage one")
        else:
            # densification must end before the geometry freezes: it needs the RGB gradients
            self.config.stop_split_at = min(self.config.stop_split_at, self.config.rgb_steps)

        if initial is not None:
            params = {key: initial[key] for key in GEOMETRY_KEYS}
        else:
            params = self._initial_gaussians()
        num_points = params["means"].shape[0]
        params[self.feature_key] = self.initial_features(num_points)
        self.gauss_params = torch.nn.ParameterDict({k: Parameter(v.contiguous()) for k, v in params.items()})

        self.camera_optimizer = self.config.camera_optimizer.setup(num_cameras=self.num_train_data, device="cpu")

        from pytorch_msssim import SSIM
        from torchmetrics.image import PeakSignalNoiseRatio

        self.psnr = PeakSignalNoiseRatio(data_range=1.0)
        self.ssim = SSIM(data_range=1.0, size_average=True, channel=3)
        self.lpips = make_lpips()
        self.step = 0
        self.crop_box = None
        if self.config.background_color == "random":
            self.background_color = torch.tensor([0.1490, 0.1647, 0.2157])  # the viser background, as splatfacto
        else:
            self.background_color = get_color(self.config.background_color)
        if self.config.use_bilateral_grid:
            from nerfstudio.model_components.lib_bilagrid import BilateralGrid

            self.bil_grids = BilateralGrid(
                num=self.num_train_data,
                grid_X=self.config.grid_shape[0],
                grid_Y=self.config.grid_shape[1],
                grid_W=self.config.grid_shape[2],
            )

        from gsplat.strategy import DefaultStrategy

        self.strategy = DefaultStrategy(
            prune_opa=self.config.cull_alpha_thresh,
            grow_grad2d=self.config.densify_grad_thresh,
            grow_scale3d=self.config.densify_size_thresh,
            grow_scale2d=self.config.split_screen_size,
            prune_scale3d=self.config.cull_scale_thresh,
            prune_scale2d=self.config.cull_screen_size,
            refine_scale2d_stop_iter=self.config.stop_screen_size_at,
            refine_start_iter=self.config.warmup_length,
            refine_stop_iter=self.config.stop_split_at,
            reset_every=self.config.reset_alpha_every * self.config.refine_every,
            refine_every=self.config.refine_every,
            pause_refine_after_reset=self.num_train_data + self.config.refine_every,
            absgrad=self.config.use_absgrad,
            revised_opacity=False,
            verbose=False,
        )
        self.strategy_state = self.strategy.initialize_state(scene_scale=1.0)

        # Persisted with the checkpoint so ns-eval / ns-viewer / segment know the state without the dataset.
        self.register_buffer("scale_quantiles", torch.zeros(NUM_SCALE_QUANTILES))
        self.register_buffer("features_trained", torch.tensor(False))
        self.populate_method_modules()

    def _initial_gaussians(self) -> Dict[str, torch.Tensor]:
        if self.seed_points is not None and not self.config.random_init:
            means = self.seed_points[0].float().cpu()
        else:
            means = (torch.rand((self.config.num_random, 3)) - 0.5) * self.config.random_scale
        distances, _ = self.k_nearest_sklearn(means, 3)
        avg_dist = torch.from_numpy(distances).mean(dim=-1, keepdim=True).clamp_min(1e-7)
        num_points = means.shape[0]
        dim_sh = num_sh_bases(self.config.sh_degree)
        if self.seed_points is not None and not self.config.random_init and self.seed_points[1].shape[0] > 0:
            shs = torch.zeros((num_points, dim_sh, 3))
            seed_rgb = self.seed_points[1].float().cpu() / 255
            if self.config.sh_degree > 0:
                shs[:, 0, :3] = RGB2SH(seed_rgb)
            else:
                shs[:, 0, :3] = torch.logit(seed_rgb, eps=1e-10)
            features_dc, features_rest = shs[:, 0, :], shs[:, 1:, :]
        else:
            features_dc = torch.rand(num_points, 3)
            features_rest = torch.zeros((num_points, dim_sh - 1, 3))
        return {
            "means": means,
            "scales": torch.log(avg_dist.repeat(1, 3)),
            "quats": random_quat_tensor(num_points),
            "features_dc": features_dc,
            "features_rest": features_rest,
            "opacities": torch.logit(0.1 * torch.ones(num_points, 1)),
        }

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
        # splatfacto replaces each Gaussian Parameter with a new one of the checkpoint's size. On resume
        # (--load-dir) the trainer has already built its optimizers around the old objects, which then
        # receive every update while the model renders the new, frozen ones. Resizing in place keeps the
        # same Parameter objects, so optimizers made before loading stay attached.
        num_points = dict["gauss_params.means"].shape[0]
        for param in self.gauss_params.values():
            param.data = param.data.new_zeros((num_points,) + tuple(param.shape[1:]))
        torch.nn.Module.load_state_dict(self, dict, **kwargs)
        # a loaded model is past stage one (splatfacto likewise sets step 30000 for its SH schedule)
        self.step = max(self.step, self.feature_start_step)

    def step_post_backward(self, step):
        if step >= self.strategy.refine_stop_iter:
            return  # geometry frozen: no densification statistics exist (and none are needed)
        super().step_post_backward(step)

    # ---- rendering -----------------------------------------------------------------------------------
    def _camera_setup(self, camera: Cameras, downscale: int) -> Tuple[torch.Tensor, torch.Tensor, int, int]:
        if self.training:
            assert camera.shape[0] == 1, "Only one camera at a time"
            camera_to_world = self.camera_optimizer.apply_to_camera(camera)
        else:
            camera_to_world = camera.camera_to_worlds
        camera.rescale_output_resolution(1 / downscale)
        viewmat = get_viewmat(camera_to_world)
        K = camera.get_intrinsics_matrices().to(self.device)
        width, height = int(camera.width.item()), int(camera.height.item())
        camera.rescale_output_resolution(downscale)
        return viewmat, K, width, height

    def _geometry(self, crop_ids: Optional[torch.Tensor], detach: bool) -> Dict[str, torch.Tensor]:
        geometry = {}
        for key in ("means", "quats", "scales", "opacities"):
            value = self.gauss_params[key]
            if crop_ids is not None:
                value = value[crop_ids]
            geometry[key] = value.detach() if detach else value
        geometry["scales"] = torch.exp(geometry["scales"])
        geometry["opacities"] = torch.sigmoid(geometry["opacities"]).squeeze(-1)
        return geometry

    def render_features(
        self,
        colors: torch.Tensor,
        camera: Cameras,
        crop_ids: Optional[torch.Tensor] = None,
        background: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Alpha-composite any per-Gaussian vectors [N, C] through the frozen geometry: ([H, W, C], [H, W, 1])."""
        viewmat, K, width, height = self._camera_setup(camera, 1)
        geometry = self._geometry(crop_ids, detach=True)
        if crop_ids is not None:
            colors = colors[crop_ids]
        render, alpha, _ = rasterize(
            colors=colors,
            viewmats=viewmat,
            Ks=K,
            width=width,
            height=height,
            packed=False,
            near_plane=0.01,
            far_plane=1e10,
            render_mode="RGB",
            sh_degree=None,
            rasterize_mode=self.config.rasterize_mode,
            backgrounds=None if background is None else background[None],
            **geometry,
        )
        return render[0], alpha[0]

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
        if not (self.training and feature_stage):
            outputs.update(self._render_rgb(camera, crop_ids, feature_stage))
        if (self.training and feature_stage) or (not self.training and self.has_features):
            outputs.update(self.segmentation_outputs(camera, crop_ids))
        if not self.training and self.viewer_hook is not None:
            outputs = self.viewer_hook(camera, crop_ids, outputs)
        return outputs

    def _render_rgb(self, camera: Cameras, crop_ids: Optional[torch.Tensor], feature_stage: bool) -> Dict[str, Any]:
        downscale = 1 if feature_stage else self._get_downscale_factor()
        viewmat, K, width, height = self._camera_setup(camera, downscale)
        self.last_size = (height, width)
        geometry = self._geometry(crop_ids, detach=False)
        features_dc, features_rest = self.features_dc, self.features_rest
        if crop_ids is not None:
            features_dc, features_rest = features_dc[crop_ids], features_rest[crop_ids]
        colors = torch.cat((features_dc[:, None, :], features_rest), dim=1)
        if self.config.sh_degree > 0:
            sh_degree = self.config.sh_degree
            if not feature_stage:
                sh_degree = min(self.step // self.config.sh_degree_interval, self.config.sh_degree)
        else:
            colors = torch.sigmoid(colors).squeeze(1)
            sh_degree = None
        render_mode = "RGB+ED" if (self.config.output_depth_during_training or not self.training) else "RGB"
        render, alpha, info = rasterize(
            colors=colors,
            viewmats=viewmat,
            Ks=K,
            width=width,
            height=height,
            packed=False,
            near_plane=0.01,
            far_plane=1e10,
            render_mode=render_mode,
            sh_degree=sh_degree,
            sparse_grad=False,
            absgrad=self.strategy.absgrad,
            rasterize_mode=self.config.rasterize_mode,
            **geometry,
        )
        if self.training:
            self.info = info
            self.strategy.step_pre_backward(self.gauss_params, self.optimizers, self.strategy_state, self.step, info)
        background = self._get_background_color()
        rgb = torch.clamp(render[..., :3] + (1 - alpha) * background, 0.0, 1.0)
        if self.config.use_bilateral_grid and self.training and camera.metadata and "cam_idx" in camera.metadata:
            rgb = self._apply_bilateral_grid(rgb, camera.metadata["cam_idx"], height, width)
        depth = None
        if render_mode == "RGB+ED":
            depth = render[..., 3:4]
            depth = torch.where(alpha > 0, depth, depth.detach().max()).squeeze(0)
        if background.shape[0] == 3 and not self.training:
            background = background.expand(height, width, 3)
        return {"rgb": rgb.squeeze(0), "depth": depth, "accumulation": alpha.squeeze(0), "background": background}

    @torch.no_grad()
    def render_rgb_subset(self, camera: Cameras, gaussian_mask: torch.Tensor) -> torch.Tensor:
        """RGB of only the masked Gaussians over the background, [H, W, 3] (for previews of a selection)."""
        was_training = self.training
        self.eval()
        try:
            return self._render_rgb(camera.to(self.device), gaussian_mask.to(self.device), feature_stage=True)["rgb"]
        finally:
            self.train(was_training)

    def segmentation_outputs(self, camera: Cameras, crop_ids: Optional[torch.Tensor]) -> Dict[str, torch.Tensor]:
        """The method's rendered feature maps (training and viewer). Default: the feature map itself."""
        features, alpha = self.render_features(self.feature_colors(), camera, crop_ids)
        return {"features": features, "feature_alpha": alpha}

    # ---- losses and metrics ----------------------------------------------------------------------------
    def get_metrics_dict(self, outputs, batch) -> Dict[str, torch.Tensor]:
        if self.training and self.in_feature_stage:
            return {"gaussian_count": self.num_points}
        return super().get_metrics_dict(outputs, batch)

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> Dict[str, torch.Tensor]:
        if self.training and self.in_feature_stage:
            if not self.has_features:
                self.features_trained.fill_(True)
            return self.feature_loss_dict(outputs, batch)
        return super().get_loss_dict(outputs, batch, metrics_dict)

    def get_image_metrics_and_images(self, outputs, batch):
        metrics, images = super().get_image_metrics_and_images(outputs, batch)
        if math.isnan(metrics.get("lpips", 0.0)):
            metrics.pop("lpips")  # not available offline: omitted rather than averaged as NaN
        return metrics, images
