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
        # Sec. 4.2: category-feature learning rate 0.005, opacity 0.001 (2% of splatfacto's 0.05): the segmentation
        # copy of the opacities trains at that rate (opacity-mode shared: the RGB opacities drop to 2% instead).
        {"binary_latent": {"optimizer": AdamOptimizerConfig(lr=0.005, eps=1e-15), "scheduler": None},
         "seg_opacities": {"optimizer": AdamOptimizerConfig(lr=0.001, eps=1e-15), "scheduler": None}},
        feature_steps=10000,  # as SAGA's feature stage (the paper gives no count; it builds on SAGA's code base)
    ),
    description="Binary-Gaussian (AAAI-26): 32-bit coarse-to-fine codes per Gaussian; click + level -> 3D mask",
)
