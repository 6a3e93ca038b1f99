"""Proto-SaGa's inference (Sec. 3.3, Eq. 17-19): prototypes from the associated masks, used as the classifier.

* :func:`view_prototype_sums` (Eq. 17): per instance t, the sum and count of view k's rendered features over
  R'_k(t), the pixels its consistent (associated) mask labels t;
* :func:`ensemble_prototypes` (Eq. 18): v(t), the mean over views of the per-view means v_k(t), over the views
  where t is seen (1/K over all K views differs by a positive factor per t, which Eq. 19's cosine ignores);
* :func:`classify` (Eq. 19): the argmax cosine to the prototypes (tau does not change an argmax), for rendered
  pixels and for the Gaussians' own embeddings alike;
* :func:`relabel_consistent`: view k's label map with each instance replaced by its memory-bank id;
* :func:`instance_votes`: each Gaussian's instance as the one its rendered pixels take most (Eq. 19 per pixel
  summed back through the compositing weights), the ``gaussian-ids votes`` option.

Pure torch, no nerfstudio.
"""

from __future__ import annotations

from typing import Callable, Sequence, Tuple

import torch
import torch.nn.functional as F

from segsplat_ns.contract import ClickProbe, LatencyProbe
from segsplat_ns.methods.common.composite import composite_weights


def relabel_consistent(label_map: torch.Tensor, bank_ids: Sequence[int]) -> torch.Tensor:
    """R'_k: ``bank_ids[t]`` where ``label_map`` is t (labels 0..len(bank_ids)-1), -1 elsewhere."""
    lookup = torch.tensor(list(bank_ids) + [-1], dtype=torch.long, device=label_map.device)
    return lookup[torch.where(label_map >= 0, label_map, torch.full_like(label_map, len(bank_ids)))]


def view_prototype_sums(features: torch.Tensor, labels: torch.Tensor, num_instances: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Eq. 17's numerator and denominator for one view: features [P, D], consistent labels [P] (-1: none) ->
    (sums float64 [T, D], counts [T])."""
    keep = labels >= 0
    sums = torch.zeros(num_instances, features.shape[1], dtype=torch.float64, device=features.device)
    sums.index_add_(0, labels[keep], features[keep].double())
    counts = torch.bincount(labels[keep], minlength=num_instances).to(features.device)
    return sums, counts


def ensemble_prototypes(view_sums: Sequence[Tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Eq. 18: v(t) = mean over the views seeing t of v_k(t) = sums / counts (Eq. 17): float32 [T, D]; an instance
    no view sees (possible only for an empty bank entry) gets a zero prototype, which Eq. 19 never picks over a
    positive cosine."""
    total = None
    seen = None
    for sums, counts in view_sums:
        present = counts > 0
        means = torch.where(present[:, None], sums / counts.clamp_min(1)[:, None].double(), torch.zeros_like(sums))
        total = means if total is None else total + means
        seen = present.long() if seen is None else seen + present.long()
    if total is None:
        return torch.zeros(0, 0)
    return (total / seen.clamp_min(1)[:, None].double()).float()


def classify(features: torch.Tensor, prototypes: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    """Eq. 19: ``argmax_t cos(v(t), F)`` for features [P, D] against prototypes [T, D] (T >= 1): long [P]."""
    if prototypes.shape[0] == 0:
        raise ValueError("no prototypes: the association found no instance")
    v = F.normalize(prototypes.float(), dim=-1)
    out = torch.empty(features.shape[0], dtype=torch.long, device=features.device)
    for start in range(0, features.shape[0], chunk):
        block = F.normalize(features[start : start + chunk].float(), dim=-1)
        out[start : start + chunk] = (block @ v.to(block.device).T).argmax(-1)
    return out


def instance_votes(renders: Sequence[Callable[[torch.Tensor], torch.Tensor]], labels: Sequence[torch.Tensor],
                   num_gaussians: int, num_instances: int, fallback: torch.Tensor, chunk: int = 64) -> torch.Tensor:  # fmt: skip
    """Each Gaussian's instance by the pixels it renders: ``argmax_t sum_k sum_p w_i(p) [labels_k(p) = t]`` over
    the views (``renders[k]`` is view k's linear render of per-Gaussian colours [N, C] -> [H, W, C], ``labels[k]``
    its per-pixel instances long [H, W], -1: no vote). A Gaussian no labelled pixel sees keeps ``fallback`` [N].
    Instances are summed ``chunk`` at a time (an N x chunk block; each view renders once per chunk); a tie goes
    to the smaller id."""
    best = torch.zeros(num_gaussians, device=fallback.device)
    ids = fallback.clone().long()
    for start in range(0, num_instances, chunk):
        width = min(chunk, num_instances - start)
        votes = torch.zeros(num_gaussians, width, device=fallback.device)
        for render, label in zip(renders, labels):
            label = label.long()  # kept compact by the caller, widened one view at a time
            inside = (label >= start) & (label < start + width)
            targets = torch.zeros(*label.shape, width, device=label.device)
            targets[inside, (label[inside] - start)] = 1.0
            votes += composite_weights(render, num_gaussians, targets).to(votes.device)
        index = votes.argmax(-1)  # the first maximum: the smaller id
        value = votes.gather(1, index[:, None]).squeeze(1)
        better = value > best
        best = torch.where(better, value, best)
        ids = torch.where(better, index + start, ids)
    return ids


def latency_probe(num: int, generator: torch.Generator, dim: int = 16, instances: int = 64) -> LatencyProbe:
    """A click on ``num`` Gaussians of ``instances`` instances (int16 ids, as stored; on the generator's device):
    Eq. 19 at the clicked pixel's rendered embedding, then every Gaussian with that id ("scoring": the id
    compare alone)."""
    device = generator.device
    protos = F.normalize(torch.randn(instances, dim, generator=generator, device=device), dim=-1)
    ids = torch.randint(instances, (num,), generator=generator, device=device)
    colors = protos[ids] + 0.3 * torch.randn(num, dim, generator=generator, device=device)
    stored = ids.to(torch.int16)

    def answer(rendered: torch.Tensor) -> torch.Tensor:
        return torch.isin(stored, classify(rendered, protos).to(torch.int16))

    return LatencyProbe(
        name="Proto-SaGa: stored instance ids equal to the clicked pixel's Eq. 19 instance",
        cases={"scoring": lambda: torch.isin(stored, stored[:1])},
        selected=int((stored == stored[0]).sum()),
        bytes_read={"int16 ids": num * 2},
        click=ClickProbe(colors, answer),
    )
