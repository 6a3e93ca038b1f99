"""splatfacto (nerfstudio 1.1.5) without its CUDA-only assumptions: the one file to re-check on a nerfstudio upgrade.

``CpuSplatfactoModel`` is ``SplatfactoModel`` with:
- ``populate_modules`` rewritten without ``.cuda()`` on the seed colours and with LPIPS optional (its AlexNet
  weights cannot be downloaded offline); extension hooks ``initial_gaussian_params`` / ``extra_gaussian_params``
  so a subclass can seed the Gaussians from elsewhere and add per-Gaussian parameters that densification,
  pruning and checkpoint loading carry;
- rendering through :func:`segsplat_ns.rendering.rasterize` (gsplat on CUDA tensors, the tiled numba rasteriser on CPU
  tensors), split into ``camera_setup`` / ``geometry`` / ``render_rgb`` so a subclass can render other per-Gaussian
  vectors through the same geometry;
- ``load_state_dict`` resizing the Gaussian parameters in place (resume keeps optimizers attached);
- ``lpips`` omitted from the metrics, not averaged as NaN, when LPIPS is unavailable.

Nothing here knows about segmentation.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.models.splatfacto import (
    RGB2SH,
    SplatfactoModel,
    get_viewmat,
    num_sh_bases,
    random_quat_tensor,
)
from nerfstudio.utils.colors import get_color
from torch.nn import Parameter

from segsplat_ns.compat.nerfstudio import make_lpips
from segsplat_ns.rendering import rasterize

GEOMETRY_KEYS = ("means", "scales", "quats", "features_dc", "features_rest", "opacities")
"""splatfacto's per-Gaussian parameters."""


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
    from segsplat_ns.compat.nerfstudio import allow_nerfstudio_checkpoints, load_error_summary
    from segsplat_ns.errors import InputError

    checkpoint = resolve_checkpoint(path)
    allow_nerfstudio_checkpoints()
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same advice
        raise InputError(
            f"--pipeline.model.init-from {path}: cannot read {checkpoint}: {load_error_summary(error)}. Pass a "
            "splatfacto run's config.yml, its nerfstudio_models/ folder or one of its step-*.ckpt files."
        ) from None
    if not isinstance(state, dict):
        raise InputError(f"--pipeline.model.init-from {path}: {checkpoint} holds a {type(state).__name__}, not a "
                         "nerfstudio checkpoint (a dict with 'pipeline')")
    pipeline_state = state.get("pipeline", state)
    gaussians = {}
    for key in GEOMETRY_KEYS:
        matches = [k for k in pipeline_state if k.endswith(f"gauss_params.{key}")]
        if not matches:
            raise InputError(
                f"{checkpoint} has no '{key}' Gaussian parameter: is it a splatfacto (or segsplat) checkpoint?"
            )
        gaussians[key] = pipeline_state[matches[0]].float()
    return gaussians


def sh_degree_of(gaussians: Dict[str, torch.Tensor]) -> int:
    """The SH degree of loaded Gaussians (from the number of ``features_rest`` bases)."""
    return int(round(math.sqrt(gaussians["features_rest"].shape[1] + 1))) - 1


class CpuSplatfactoModel(SplatfactoModel):
    """splatfacto 1.1.5 that runs on CPU tensors too (see the module docstring for what differs)."""

    # ---- construction (splatfacto's populate_modules, CPU-safe) ---------------------------------------
    def populate_modules(self) -> None:
        params = self.initial_gaussian_params()
        params.update(self.extra_gaussian_params(params["means"].shape[0]))
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

    def initial_gaussian_params(self) -> Dict[str, torch.Tensor]:
        """splatfacto's initial Gaussians: the seed points (with their colours) or a random cube."""
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

    def extra_gaussian_params(self, num_points: int) -> Dict[str, torch.Tensor]:
        """More per-Gaussian parameters (first dimension ``num_points``) to carry with the Gaussians."""
        return {}

    def load_state_dict(self, dict, **kwargs):  # type: ignore[override]
        # splatfacto replaces each Gaussian Parameter with a new one of the checkpoint's size. On resume
        # (--load-dir) the trainer has already built its optimizers around the old objects, which then
        # receive every update while the model renders the new, frozen ones. Resizing in place keeps the
        # same Parameter objects, so optimizers made before loading stay attached.
        num_points = dict["gauss_params.means"].shape[0]
        for param in self.gauss_params.values():
            param.data = param.data.new_zeros((num_points,) + tuple(param.shape[1:]))
        torch.nn.Module.load_state_dict(self, dict, **kwargs)

    # ---- rendering -------------------------------------------------------------------------------------
    def camera_setup(self, camera: Cameras, downscale: int) -> Tuple[torch.Tensor, torch.Tensor, int, int]:
        """(viewmat, K, width, height) of a camera at ``1 / downscale`` resolution (camera optimiser in training)."""
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

    def geometry(self, crop_ids: Optional[torch.Tensor], detach: bool) -> Dict[str, torch.Tensor]:
        """Activated means / quats / scales / opacities for the rasteriser (``crop_ids`` selects Gaussians)."""
        geometry = {}
        for key in ("means", "quats", "scales", "opacities"):
            value = self.gauss_params[key]
            if crop_ids is not None:
                value = value[crop_ids]
            geometry[key] = value.detach() if detach else value
        geometry["scales"] = torch.exp(geometry["scales"])
        geometry["opacities"] = torch.sigmoid(geometry["opacities"]).squeeze(-1)
        return geometry

    def rasterize_view(
        self,
        colors: torch.Tensor,
        viewmat: torch.Tensor,
        K: torch.Tensor,
        width: int,
        height: int,
        geometry: Dict[str, torch.Tensor],
        **options: Any,
    ) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, Any]]:
        """:func:`rasterize` with splatfacto's fixed settings (unpacked, near 0.01, far 1e10, its rasterize mode)."""
        return rasterize(
            colors=colors,
            viewmats=viewmat,
            Ks=K,
            width=width,
            height=height,
            packed=False,
            near_plane=0.01,
            far_plane=1e10,
            rasterize_mode=self.config.rasterize_mode,
            **geometry,
            **options,
        )

    def render_rgb(self, camera: Cameras, crop_ids: Optional[torch.Tensor], final: bool) -> Dict[str, Any]:
        """splatfacto's RGB (+ expected depth) render. ``final``: past the schedule (full resolution, every SH
        degree), as after the RGB stage; otherwise splatfacto's downscale and SH warm-up at ``self.step``."""
        downscale = 1 if final else self._get_downscale_factor()
        viewmat, K, width, height = self.camera_setup(camera, downscale)
        self.last_size = (height, width)
        geometry = self.geometry(crop_ids, detach=False)
        features_dc, features_rest = self.features_dc, self.features_rest
        if crop_ids is not None:
            features_dc, features_rest = features_dc[crop_ids], features_rest[crop_ids]
        colors = torch.cat((features_dc[:, None, :], features_rest), dim=1)
        if self.config.sh_degree > 0:
            sh_degree = self.config.sh_degree
            if not final:
                sh_degree = min(self.step // self.config.sh_degree_interval, self.config.sh_degree)
        else:
            colors = torch.sigmoid(colors).squeeze(1)
            sh_degree = None
        render_mode = "RGB+ED" if (self.config.output_depth_during_training or not self.training) else "RGB"
        render, alpha, info = self.rasterize_view(
            colors, viewmat, K, width, height, geometry,
            render_mode=render_mode, sh_degree=sh_degree, sparse_grad=False, absgrad=self.strategy.absgrad,
        )  # fmt: skip
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

    # ---- metrics -------------------------------------------------------------------------------------
    def get_image_metrics_and_images(self, outputs, batch):
        metrics, images = super().get_image_metrics_and_images(outputs, batch)
        if math.isnan(metrics.get("lpips", 0.0)):
            metrics.pop("lpips")  # not available offline: omitted rather than averaged as NaN
        return metrics, images
