"""What every method's `ns-train` config shares: splatfacto's optimizers and trainer settings (nerfstudio 1.1.5)."""

from __future__ import annotations

from typing import Any, Dict

from nerfstudio.configs.base_config import MachineConfig, ViewerConfig
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.engine.schedulers import ExponentialDecaySchedulerConfig
from nerfstudio.engine.trainer import TrainerConfig

from segsplat_ns.base_model import SegSplatModelConfig
from segsplat_ns.compat import allow_nerfstudio_checkpoints, default_device_type
from segsplat_ns.datamanager import SegSplatDataManagerConfig
from segsplat_ns.pipeline import SegSplatPipelineConfig

# Method configs are imported by nerfstudio's method discovery before any checkpoint is read
# (ns-train --load-dir, ns-eval, ns-viewer).
allow_nerfstudio_checkpoints()


def splatfacto_optimizers(rgb_steps: int) -> Dict[str, Dict[str, Any]]:
    """splatfacto's optimizers, with the means' decay stretched over the RGB stage instead of 30000 steps."""
    return {
        "means": {
            "optimizer": AdamOptimizerConfig(lr=1.6e-4, eps=1e-15),
            "scheduler": ExponentialDecaySchedulerConfig(lr_final=1.6e-6, max_steps=rgb_steps),
        },
        "features_dc": {"optimizer": AdamOptimizerConfig(lr=0.0025, eps=1e-15), "scheduler": None},
        "features_rest": {"optimizer": AdamOptimizerConfig(lr=0.0025 / 20, eps=1e-15), "scheduler": None},
        "opacities": {"optimizer": AdamOptimizerConfig(lr=0.05, eps=1e-15), "scheduler": None},
        "scales": {"optimizer": AdamOptimizerConfig(lr=0.005, eps=1e-15), "scheduler": None},
        "quats": {"optimizer": AdamOptimizerConfig(lr=0.001, eps=1e-15), "scheduler": None},
        "camera_opt": {
            "optimizer": AdamOptimizerConfig(lr=1e-4, eps=1e-15),
            "scheduler": ExponentialDecaySchedulerConfig(
                lr_final=5e-7, max_steps=rgb_steps, warmup_steps=1000, lr_pre_warmup=0
            ),
        },
        "bilateral_grid": {
            "optimizer": AdamOptimizerConfig(lr=2e-3, eps=1e-15),
            "scheduler": ExponentialDecaySchedulerConfig(
                lr_final=1e-4, max_steps=rgb_steps, warmup_steps=1000, lr_pre_warmup=0
            ),
        },
    }


def segsplat_trainer_config(
    method_name: str,
    model: SegSplatModelConfig,
    method_optimizers: Dict[str, Dict[str, Any]],
    feature_steps: int,
) -> TrainerConfig:
    """The TrainerConfig every method shares: splatfacto's settings for ``model.rgb_steps`` RGB steps, then
    ``feature_steps`` of the method's own training (joint with the geometry for a method that does not freeze
    it, whose geometry schedules then span the whole run); CPU chosen automatically when CUDA is absent."""
    joint = not model._target.freezes_geometry
    geometry_steps = model.rgb_steps + feature_steps if joint else model.rgb_steps
    return TrainerConfig(
        method_name=method_name,
        steps_per_eval_image=100,
        steps_per_eval_batch=0,
        steps_per_save=2000,
        steps_per_eval_all_images=1_000_000,
        max_num_iterations=model.rgb_steps + feature_steps,
        mixed_precision=False,
        machine=MachineConfig(device_type=default_device_type()),
        pipeline=SegSplatPipelineConfig(datamanager=SegSplatDataManagerConfig(), model=model),
        optimizers={**splatfacto_optimizers(geometry_steps), **method_optimizers},
        viewer=ViewerConfig(num_rays_per_chunk=1 << 15),
        vis="viewer",
    )
