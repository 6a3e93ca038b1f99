"""`ns-train lift`: splatfacto, then the training views' masks and CLIP features lifted onto it in one pass."""

from __future__ import annotations

from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.plugins.types import MethodSpecification

from segsplat_ns.method_configs.common import segsplat_trainer_config
from segsplat_ns.methods.lift import LiftModelConfig

lift_method = MethodSpecification(
    config=segsplat_trainer_config(
        "lift",
        LiftModelConfig(),
        # the base's per-Gaussian feature is unused (lift trains nothing): a group nerfstudio requires, never stepped
        {"lift_unused": {"optimizer": AdamOptimizerConfig(lr=0.0, eps=1e-15), "scheduler": None}},
        feature_steps=1,  # one step, then the lifting pass (the model ends the run there whatever the flags say)
    ),
    description="Training-free lifting (FlashSplat labels + Occam's LGS CLIP features) of masks onto a splat",
)
