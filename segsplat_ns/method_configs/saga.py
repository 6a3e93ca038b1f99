"""`ns-train saga`: splatfacto for `rgb-steps`, then SAGA's affinity features with the geometry frozen."""

from __future__ import annotations

from nerfstudio.configs.base_config import MachineConfig, ViewerConfig
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.plugins.types import MethodSpecification

from segsplat_ns.compat import allow_nerfstudio_checkpoints, default_device_type
from segsplat_ns.datamanager import SegSplatDataManagerConfig
from segsplat_ns.method_configs.common import splatfacto_optimizers
from segsplat_ns.methods.saga import SagaModelConfig
from segsplat_ns.pipeline import SegSplatPipelineConfig

# Loaded by nerfstudio's method discovery before any checkpoint is read (ns-train --load-dir, ns-eval, ns-viewer).
allow_nerfstudio_checkpoints()

RGB_STEPS = 30000
FEATURE_STEPS = 10000  # the authors' scripts: --iterations 10000

saga_method = MethodSpecification(
    config=TrainerConfig(
        method_name="saga",
        steps_per_eval_image=100,
        steps_per_eval_batch=0,
        steps_per_save=2000,
        steps_per_eval_all_images=1_000_000,
        max_num_iterations=RGB_STEPS + FEATURE_STEPS,
        mixed_precision=False,
        machine=MachineConfig(device_type=default_device_type()),
        pipeline=SegSplatPipelineConfig(
            datamanager=SegSplatDataManagerConfig(),
            model=SagaModelConfig(rgb_steps=RGB_STEPS),
        ),
        optimizers={
            **splatfacto_optimizers(RGB_STEPS),
            # feature_lr 0.0025 in the authors' training scripts; the gate shares the optimizer settings
            "affinity_features": {"optimizer": AdamOptimizerConfig(lr=0.0025, eps=1e-15), "scheduler": None},
            "scale_gate": {"optimizer": AdamOptimizerConfig(lr=0.0025, eps=1e-15), "scheduler": None},
        },
        viewer=ViewerConfig(num_rays_per_chunk=1 << 15),
        vis="viewer",
    ),
    description="SAGA (Segment Any 3D GAussians, AAAI-25): click + scale -> 3D mask; RGB splat then affinity features",
)


