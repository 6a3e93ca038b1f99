"""`ns-train proto-saga`: splatfacto with a per-Gaussian instance embedding trained jointly from the first step."""

from __future__ import annotations

from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.plugins.types import MethodSpecification

from segsplat_ns.method_configs.common import segsplat_trainer_config
from segsplat_ns.methods.proto_saga import ProtoSagaModelConfig

proto_saga_method = MethodSpecification(
    config=segsplat_trainer_config(
        "proto-saga",
        ProtoSagaModelConfig(rgb_steps=0),
        {
            # the paper (Sec. 4.1): Adam, 2.5e-3 for the embeddings and 5e-4 for the classifiers
            "instance_embeddings": {"optimizer": AdamOptimizerConfig(lr=2.5e-3, eps=1e-15), "scheduler": None},
            "view_classifiers": {"optimizer": AdamOptimizerConfig(lr=5e-4, eps=1e-15), "scheduler": None},
        },
        feature_steps=30000,  # the paper: 30K iterations in all, joint from the first
    ),
    description="Proto-SaGa (prototype-based segmentation, semantic-aware grouping): instances; joint RGB + embedding",
)
