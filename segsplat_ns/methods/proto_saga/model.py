"""Proto-SaGa — prototype-based 3D segmentation with semantic-aware Gaussian grouping: what the paper adds.

- a 16-float embedding per Gaussian trained **jointly** with the RGB splat (``freezes_geometry = False``): the
  reconstruction loss plus lambda_CE times Eq. 7, from the first step, through densification and pruning;
- one cosine classifier w_k per training view (Eq. 6), trained against that view's own instance labels M_k
  (:mod:`.labels`);
- after the last step (``finish_training``): the memory-bank association of the views' instances (Eq. 9-16,
  :mod:`.association`), then prototypes from the associated masks (Eq. 17-18, :mod:`.prototypes`);
- inference: a pixel's instance is the argmax cosine of its rendered embedding to the prototypes (Eq. 19), and so
  is each Gaussian's (its own embedding; stored as an int16 id). A click selects the clicked pixel's instance; the
  decomposition is every Gaussian's instance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Literal, Optional, Sequence, Type

import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor
from torch.nn import Parameter, ParameterList
from tqdm import tqdm

from segsplat_ns.base_model import SegSplatModel, SegSplatModelConfig
from segsplat_ns.contract import INSTANCES, Granularity, LatencyProbe, TrainingViews, Wording
from segsplat_ns.methods.common import InferenceMemo, composite_weights, decode, instance_codes
from segsplat_ns.methods.proto_saga import association, labels, prototypes

__all__ = ["ProtoSagaModel", "ProtoSagaModelConfig"]


@dataclass
class ProtoSagaModelConfig(SegSplatModelConfig):
    """Proto-SaGa's instance embeddings, trained jointly with splatfacto."""

    _target: Type = field(default_factory=lambda: ProtoSagaModel)
    feature_dim: int = 16
    """D: width of each Gaussian's embedding f_i (paper: 16)."""
    rgb_steps: int = 0
    """RGB-only steps before the joint stage (paper: 0, the embedding trains with the splat from the first step)."""
    lambda_ce: float = 0.05
    """lambda_CE of Eq. 8: L = L_REC + lambda_CE * L_CE (paper: 0.05)."""
    tau: float = 10.0
    """tau of Eq. 6 / 14: temperature of the cosine logits (paper: 10)."""
    label_masks: Literal["whole", "finest"] = "whole"
    """M_k of Eq. 7: each pixel's coarsest mask (whole objects) or its finest (every mask painted)."""
    max_view_instances: int = 255
    """Classes of each view's classifier w_k, the cap on L_k (Gaga's uint8 id maps: 255)."""
    association: Literal["depth+semantic", "depth", "semantic"] = "depth+semantic"
    """Eq. 16 (paper), Eq. 10 alone (Gaga) or Eq. 15 alone: the Gaussians that stand for an instance."""
    delta_d: float = 0.2
    """delta_d of Eq. 10: fraction of an instance's Gaussians kept by depth (paper, Gaga: 0.2)."""
    delta_s: float = 0.2
    """delta_s of Eq. 15: fraction kept by classifier probability (paper: delta_s = delta_d)."""
    delta: float = 0.1
    """delta of Eq. 13: overlap score gamma above which an instance merges into a bank entry (paper, Gaga: 0.1)."""
    semantic_min_weight: Optional[float] = None
    """Eq. 15 ranks only Gaussians with this much compositing weight in the view (preset: paper 0, segsplat 0.05)."""
    min_instance_views: Optional[int] = None
    """Bank entries joined by fewer views get no prototype (Eq. 17-18) (preset: paper 1 keeps all, segsplat 3)."""
    gaussian_ids: Optional[Literal["embedding", "votes"]] = None
    """A Gaussian's id: Eq. 19 on its own f_i, or the Eq. 19 instance its training pixels take (preset)."""
    ce_geometry: Optional[bool] = None
    """Eq. 8's L_CE also moves the geometry (paper), or only the embeddings and classifiers (preset)."""

    presets: ClassVar[Dict[str, Dict[str, Any]]] = {
        "paper": {"semantic_min_weight": 0.0, "min_instance_views": 1, "gaussian_ids": "embedding",
                  "ce_geometry": True},
        "segsplat": {"semantic_min_weight": 0.05, "min_instance_views": 3, "gaussian_ids": "votes",
                     "ce_geometry": False},
    }  # fmt: skip


class ProtoSagaModel(SegSplatModel):
    config: ProtoSagaModelConfig
    feature_key = "instance_embeddings"
    freezes_geometry = False
    uses_mask_scales = False  # instance labels from the masks themselves; no prompt is sized
    score_kind = "selection"
    wording = Wording(
        nothing_selected="the clicked pixel's instance holds no Gaussian",
        uses_threshold=False,
        not_trained="this proto-saga run has no instances yet: they are computed after its last training step "
        "(association and prototypes); finish the run (ns-train proto-saga --load-dir <its nerfstudio_models> with "
        "the same flags) or load a finished one",
    )

    # ---- construction ----------------------------------------------------------------------------------
    def populate_method_modules(self) -> None:
        views = max(int(self.num_train_data), 1)
        width = self.config.max_view_instances
        # one parameter per view: a view's classifier gets no gradient (and so no Adam step) when another is drawn
        self.view_classifiers = ParameterList(
            [Parameter(torch.randn(width, self.config.feature_dim)) for _ in range(views)]
        )
        self.register_buffer("view_classes", torch.zeros(views, dtype=torch.long))  # L_k (0: not seen yet)
        self.register_buffer("prototypes", torch.zeros(0, self.config.feature_dim))
        self.register_buffer("instance_ids", torch.zeros(0, dtype=torch.int16))
        self.register_buffer("instance_views", torch.zeros(0, dtype=torch.int16))  # views that joined each instance
        self._label_maps: Dict[int, Tensor] = {}
        self._memo = InferenceMemo()

    def method_param_groups(self) -> Dict[str, List[Parameter]]:
        return {"view_classifiers": list(self.view_classifiers)}

    def load_state_dict(self, dict, **kwargs):  # type: ignore[override]
        # the association's results have the checkpoint's sizes (instances, Gaussians)
        for name in ("prototypes", "instance_ids", "instance_views"):
            key = name if name in dict else next((k for k in dict if k.endswith("." + name)), None)
            if key is not None:
                setattr(self, name, getattr(self, name).new_zeros(dict[key].shape))
        super().load_state_dict(dict, **kwargs)

    @property
    def has_features(self) -> bool:
        """Trained embeddings and the instances of ``finish_training`` for the current Gaussians."""
        return (bool(self.features_trained) and self.prototypes.shape[0] > 0
                and self.instance_ids.shape[0] == self.num_points)  # fmt: skip

    # ---- training: Eq. 6-8 --------------------------------------------------------------------------------
    def feature_geometry(self, crop_ids: Optional[Tensor], detach: bool) -> Dict[str, Tensor]:
        # ce-geometry False: the embeddings render through the geometry the reconstruction alone shapes
        return super().feature_geometry(crop_ids, detach or not self.config.ce_geometry)

    def label_map(self, view: int, masks: Tensor) -> Tensor:
        """M_k of a training view (computed once per view; also records L_k)."""
        if view not in self._label_maps:
            label_map = labels.instance_label_map(masks, self.config.label_masks, self.config.max_view_instances)
            self._label_maps[view] = label_map
            self.view_classes[view] = int(label_map.max()) + 1
        return self._label_maps[view]

    def feature_loss_dict(self, outputs: Dict[str, Tensor], batch: Dict[str, Any]) -> Dict[str, Tensor]:
        rendered = outputs["features"]  # [H, W, D], rendered through the (trained) geometry
        view = int(batch["image_idx"])
        label_map = self.label_map(view, batch["masks"]).to(rendered.device)
        if tuple(label_map.shape) != tuple(rendered.shape[:2]):
            raise RuntimeError(f"view {view}: masks are {tuple(label_map.shape)}, the render {tuple(rendered.shape[:2])}")
        ce = labels.view_cross_entropy(rendered.reshape(-1, rendered.shape[-1]), label_map.reshape(-1),
                                       self.view_classifiers[view], int(self.view_classes[view]), self.config.tau)  # fmt: skip
        return {"proto_saga_ce": self.config.lambda_ce * ce}

    # ---- after training: Eq. 9-18 ---------------------------------------------------------------------------
    @torch.no_grad()
    def finish_training(self, views: TrainingViews) -> None:
        """Associate every view's instances (Eq. 9-16), then prototypes (Eq. 17-18) and each Gaussian's instance."""
        bank = self.associate(views.cameras, views.masks)
        self.compute_prototypes(views.cameras, bank)

    @torch.no_grad()
    def associate(self, cameras: Cameras, masks: Sequence[Tensor]) -> association.MemoryBank:
        """Eq. 9-16 over the training views in order: the memory bank of instances."""
        embeddings = self.gauss_params[self.feature_key].detach()
        num = embeddings.shape[0]
        mode = self.config.association
        views: List[List[Tensor]] = []
        for k in tqdm(range(len(cameras)), desc="proto-saga: association (Eq. 9-16)", unit="view", leave=False):
            label_map = self.label_map(k, masks[k]).to(self.device)
            classes = int(self.view_classes[k])
            pixels, depth = self.project_centres(cameras[k : k + 1].to(self.device))
            owner = association.gaussian_labels(pixels, label_map)
            probs, seen = None, None
            if mode != "depth" and classes > 0:
                probs = labels.gaussian_probabilities(embeddings, self.view_classifiers[k].detach(), classes, self.config.tau)
                if self.config.semantic_min_weight > 0:  # an occluded Gaussian's f_i is not what view k's w_k saw
                    camera = cameras[k : k + 1].to(self.device)
                    ones = torch.ones(int(camera.height), int(camera.width), 1, device=self.device)
                    weight = composite_weights(lambda c: self.render_features(c, camera)[0], num, ones)[:, 0]
                    seen = weight >= self.config.semantic_min_weight
            sets = []
            for t in range(classes):
                members = (owner == t).nonzero().squeeze(1)
                ranked = members if seen is None else members[seen[members]]
                if mode == "depth":
                    chosen = association.front_set(members, depth, self.config.delta_d)
                elif mode == "semantic":
                    chosen = association.semantic_set(ranked, probs[:, t], self.config.delta_s)
                else:
                    chosen = association.proto_saga_set(members, depth, probs[:, t], self.config.delta_d, self.config.delta_s,
                                                        ranked)  # fmt: skip
                sets.append(chosen.cpu())
            views.append(sets)
        bank = association.associate(views, num, self.config.delta)
        CONSOLE.log(f"proto-saga: {sum(len(v) for v in views)} view instances associated into {len(bank.entries)} "
                    f"instances ({mode})")
        return bank

    @torch.no_grad()
    def compute_prototypes(self, cameras: Cameras, bank: association.MemoryBank) -> None:
        """Eq. 17-18 from each view's consistent mask R'_k (over the entries ``min-instance-views`` keeps), then every
        Gaussian's instance (``gaussian-ids``)."""
        embeddings = self.gauss_params[self.feature_key].detach()
        views = bank.view_counts()
        new_id = association.kept_entries(views, self.config.min_instance_views).to(self.device)
        count = int((new_id >= 0).sum())
        if count < len(bank.entries):
            CONSOLE.log(f"proto-saga: {len(bank.entries) - count} of {len(bank.entries)} instances dropped (joined by "
                        f"fewer than {self.config.min_instance_views} views)")
        sums = []
        for k in tqdm(range(len(cameras)), desc="proto-saga: prototypes (Eq. 17-18)", unit="view", leave=False):
            if k not in self._label_maps:
                continue
            rendered, _ = self.render_features(embeddings, cameras[k : k + 1].to(self.device))
            consistent = self._consistent_map(k, bank, new_id)
            sums.append(prototypes.view_prototype_sums(rendered.reshape(-1, rendered.shape[-1]), consistent.reshape(-1), count))
        self.prototypes = prototypes.ensemble_prototypes(sums).to(self.device) if count else self.prototypes[:0]
        self.instance_views = views[(new_id >= 0).cpu()].to(torch.int16).to(self.device)
        ids = prototypes.classify(embeddings, self.prototypes) if count else torch.zeros(0, dtype=torch.long)
        if count and self.config.gaussian_ids == "votes":
            ids = self.vote_instances(cameras, embeddings, fallback=ids)
        dtype = torch.int16 if count <= torch.iinfo(torch.int16).max else torch.int32
        self.instance_ids = ids.to(dtype)
        self._memo.clear()

    def _consistent_map(self, view: int, bank: association.MemoryBank, new_id: Tensor) -> Tensor:
        """R'_k with the kept entries' ids (-1: no mask, or a dropped entry)."""
        consistent = prototypes.relabel_consistent(self._label_maps[view].to(self.device), bank.view_ids[view])
        return torch.where(consistent >= 0, new_id[consistent.clamp_min(0)], consistent)

    @torch.no_grad()
    def vote_instances(self, cameras: Cameras, embeddings: Tensor, fallback: Tensor) -> Tensor:
        """``gaussian-ids votes``: each Gaussian takes the Eq. 19 instance of the training pixels it renders most
        (pixels under half covered do not vote); one that no such pixel sees keeps ``fallback``."""
        renders, labels = [], []
        for k in tqdm(range(len(cameras)), desc="proto-saga: Gaussian ids (votes)", unit="view", leave=False):
            camera = cameras[k : k + 1].to(self.device)
            rendered, alpha = self.render_features(embeddings, camera)
            label = prototypes.classify(rendered.reshape(-1, rendered.shape[-1]), self.prototypes).reshape(alpha.shape[:2])
            label = torch.where(alpha[..., 0] >= 0.5, label, torch.full_like(label, -1))
            labels.append(label.to(torch.int16 if self.prototypes.shape[0] < 2**15 else torch.int32))  # one map a view
            renders.append(lambda colours, camera=camera: self.render_features(colours, camera)[0])
        return prototypes.instance_votes(renders, labels, embeddings.shape[0], self.prototypes.shape[0], fallback)

    # ---- inference (the method contract) ----------------------------------------------------------------------
    @property
    def granularity(self) -> Granularity:
        """Instances: a click selects the clicked pixel's instance, whatever the scale."""
        return INSTANCES

    def _state(self) -> tuple:
        ids, embeddings = self.instance_ids, self.gauss_params[self.feature_key]
        return (ids.data_ptr(), ids._version, ids.shape[0], self.prototypes.data_ptr(), self.prototypes._version,
                embeddings.data_ptr(), embeddings._version)  # fmt: skip

    @property
    def renders_instance_codes(self) -> bool:
        """With ``gaussian-ids votes`` an inference render carries each Gaussian's instance code after its
        embedding, so a click takes the instance its pixel shows (as the decomposition does), not Eq. 19's."""
        return not self.training and self.has_features and self.config.gaussian_ids == "votes"

    def instance_code_table(self) -> Tensor:
        return self._memo.get(self._state(), "codes", lambda: instance_codes(self.prototypes.shape[0],
                                                                              self.config.feature_dim).to(self.device))  # fmt: skip

    def feature_colors(self) -> Tensor:
        """The embeddings f_i, then (``renders_instance_codes``) each Gaussian's instance code: [N, D] or [N, 2D]."""
        embeddings = self.gauss_params[self.feature_key]
        if not self.renders_instance_codes:
            return embeddings
        return self._memo.get(self._state(), "colours", lambda: torch.cat(
            [embeddings.detach(), self.instance_code_table()[self.instance_ids.long()]], -1))  # fmt: skip

    def pixel_instances(self, rendered: Tensor) -> Tensor:
        """The instance of each rendered pixel [K, D or 2D]: the decoded code where the render carries codes (-1:
        background), else Eq. 19. A render made while training carries no codes, hence the width decides."""
        dim = self.config.feature_dim
        if rendered.shape[-1] > dim:
            return decode(rendered[:, dim:], self.instance_code_table())
        return prototypes.classify(rendered, self.prototypes)

    @torch.no_grad()
    def prompt_query(self, rendered: Tensor, scale: float) -> Tensor:
        """The clicked pixels' instances (Eq. 19, or the decoded votes: :meth:`pixel_instances`): ids [K]."""
        return self.pixel_instances(rendered)

    @torch.no_grad()
    def gaussian_scores(self, queries: Tensor, scale: float, exact_near: Optional[float] = None) -> Tensor:
        """The Gaussians of the queried instances: bool [N] (the selection itself)."""
        return torch.isin(self.instance_ids.long(), queries.long().to(self.instance_ids.device))

    @torch.no_grad()
    def labels_at_scale(self, scale: float) -> Tensor:
        """Every Gaussian's instance, renumbered 0..K-1 by decreasing size (the scale is not used)."""

        from segsplat_ns.decompose import rank_by_size

        return self._memo.get(self._state(), "labels", lambda: rank_by_size(self.instance_ids.long()))

    def segmentation_outputs(self, camera: Cameras, crop_ids: Optional[Tensor]) -> Dict[str, Tensor]:
        """The embedding map, and outside training ``instances``: each pixel coloured by its instance (Eq. 19, or the
        decoded votes with ``gaussian-ids votes``)."""
        outputs = super().segmentation_outputs(camera, crop_ids)
        if not self.training and self.has_features:
            from segsplat_ns.viewer.overlay import segment_palette

            rendered, alpha = outputs["features"], outputs["feature_alpha"]
            outputs["features"] = rendered[..., : self.config.feature_dim]
            ids = self.pixel_instances(rendered.reshape(-1, rendered.shape[-1])).reshape(rendered.shape[:2])
            colours = segment_palette(self.prototypes.shape[0]).to(rendered.device)[ids.clamp_min(0)]
            shown = (alpha >= 0.5) & (ids >= 0)[..., None]
            outputs["instances"] = torch.where(shown, colours, torch.zeros_like(colours))
        return outputs

    # ---- tooling ----------------------------------------------------------------------------------------------
    @classmethod
    def cpu_training_args(cls, tiny: bool = False) -> List[str]:
        # joint from the first step, as the paper: the shared schedule's RGB steps become joint steps
        return ["--pipeline.model.rgb-steps", "0"]

    @classmethod
    def latency_probe(cls, num: int, dim: int, threshold: float, generator: torch.Generator) -> Optional[LatencyProbe]:
        """The id compare of a click and the whole click from a rendered embedding (:func:`.prototypes.latency_probe`)."""
        return prototypes.latency_probe(num, generator)
