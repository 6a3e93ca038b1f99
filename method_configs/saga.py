"""`ns-train saga`: splatfacto for `rgb-steps`, then SAGA's affinity features with the geometry frozen."""

from __future__ import annotations

from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.plugins.types import MethodSpecification

from segsplat_ns.method_configs.common import segsplat_trainer_config
from segsplat_ns.methods.saga import SagaModelConfig

saga_method = MethodSpecification(
    config=segsplat_trainer_config(
        "saga",
        SagaModelConfig(rgb_steps=30000),
        {
            # feature_lr 0.0025 in the authors' training scripts; the gate shares the optimizer settings
            "affinity_features": {"optimizer": AdamOptimizerConfig(lr=0.0025, eps=1e-15), "scheduler": None},
            "scale_gate": {"optimizer": AdamOptimizerConfig(lr=0.0025, eps=1e-15), "scheduler": None},
        },
        feature_steps=10000,  # the authors' scripts: --iterations 10000
    ),
    description="SAGA (Segment Any 3D GAussians, AAAI-25): click + scale -> 3D mask; RGB splat then affinity features",
)
