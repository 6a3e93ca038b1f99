"""`ns-train binary-gaussian`: splatfacto for `rgb-steps`, then 32-bit coarse-to-fine codes (opacity fine-tuned)."""

from __future__ import annotations

from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.plugins.types import MethodSpecification

from segsplat_ns.method_configs.common import segsplat_trainer_config
from segsplat_ns.methods.binary_gaussian import BinaryGaussianModelConfig

binary_gaussian_method = MethodSpecification(
    config=segsplat_trainer_config(
        "binary-gaussian",
        BinaryGaussianModelConfig(rgb_steps=30000),
        # opacities keep splatfacto's lr 0.05 in stage one; the model drops it to 2% (0.001) in the feature stage.
        # Sec. 4.2: category-feature learning rate 0.005.
        {"binary_latent": {"optimizer": AdamOptimizerConfig(lr=0.005, eps=1e-15), "scheduler": None}},
        feature_steps=10000,  # as SAGA's feature stage (the paper gives no count; it builds on SAGA's code base)
    ),
    description="Binary-Gaussian (AAAI-26): 32-bit coarse-to-fine codes per Gaussian; click + level -> 3D mask",
)
