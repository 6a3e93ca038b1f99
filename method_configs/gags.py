"""`ns-train gags`: splatfacto for `rgb-steps`, then GAGS's distilled CLIP features with the geometry frozen."""

from __future__ import annotations

from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.plugins.types import MethodSpecification

from segsplat_ns.method_configs.common import segsplat_trainer_config
from segsplat_ns.methods.gags import GagsModelConfig

gags_method = MethodSpecification(
    config=segsplat_trainer_config(
        "gags",
        GagsModelConfig(rgb_steps=30000, consistency_start=15000),
        {
            # the authors' train.py: semantic_feature_lr 1e-3, both decoders Adam 1e-4
            "language_features": {"optimizer": AdamOptimizerConfig(lr=1e-3, eps=1e-15), "scheduler": None},
            "feature_decoder": {"optimizer": AdamOptimizerConfig(lr=1e-4, eps=1e-15), "scheduler": None},
            "granularity_decoder": {"optimizer": AdamOptimizerConfig(lr=1e-4, eps=1e-15), "scheduler": None},
        },
        feature_steps=30000,  # the authors' GAD.sh: 30,000 iterations
    ),
    description="GAGS (granularity-aware feature distillation, AAAI-26): text prompts; RGB splat then CLIP features",
)
