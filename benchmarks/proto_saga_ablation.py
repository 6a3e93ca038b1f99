"""Proto-SaGa's post-training choices, one row each, on finished runs (docs/proto-saga.md, "Ablation").

Everything after a proto-saga run's last step - the association (Eq. 9-16), the prototypes (Eq. 17-18) and each
Gaussian's instance - reads only the trained Gaussians, the per-view classifiers and the training masks. So every
row here re-does that step on the same trained run with other settings and evaluates it as `ns-eval` does (click
mIoU, Hungarian-matched decomposition mIoU / precision / recall on the eval views): the rows differ in nothing
else. Rows: the association (Eq. 16, Eq. 10 alone as Gaga, Eq. 15 alone) under the paper preset, then the
segsplat options alone and all together.

Then the paper's Table 4 (inference schemes, each scored per pixel as the paper does: every eval view's rendered
embedding classified, Hungarian-matched to the ground-truth objects), on the paper preset's association:

* prototypes: Eq. 18's ensemble, Eq. 19 (the paper's scheme);
* k-means: k-means++ (k = the number of associated instances, 100 Lloyd steps, seed 0) over every per-view
  prototype v_k(t) of Eq. 17, the centres used as Eq. 19's prototypes;
* Cls: a linear classifier (16 -> instances, with bias, as Gaga's 1x1 convolution) trained by cross-entropy
  against the associated masks R'_k jointly with the embeddings (Adam 5e-4 / 2.5e-3, geometry frozen) for
  ``--cls-steps`` steps (the paper: 10K; default 1,500, the bench's feature-stage length), one random training
  view per step; scored by its argmax.

    python benchmarks/proto_saga_ablation.py outputs/bench/seed0/runs/proto-saga-segsplat/.../config.yml [...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, List

PAPER = {"association": "depth+semantic", "semantic_min_weight": 0.0, "min_instance_views": 1, "gaussian_ids": "embedding"}
ROWS = [
    ("paper (Eq. 16 association)", PAPER),
    ("paper, Eq. 10 only (Gaga)", {**PAPER, "association": "depth"}),
    ("paper, Eq. 15 only", {**PAPER, "association": "semantic"}),
    ("+ semantic-min-weight 0.05", {**PAPER, "semantic_min_weight": 0.05}),
    ("+ min-instance-views 3", {**PAPER, "min_instance_views": 3}),
    ("+ gaussian-ids votes", {**PAPER, "gaussian_ids": "votes"}),
    ("segsplat (all three)", {**PAPER, "semantic_min_weight": 0.05, "min_instance_views": 3, "gaussian_ids": "votes"}),
]
KEYS = [("seg_object_miou", "object click mIoU"), ("seg_part_miou", "part click mIoU"),
        ("decomp_object_miou", "decomp. object mIoU"), ("decomp_object_precision", "P"),
        ("decomp_object_recall", "R"), ("pixel_miou", "per-pixel mIoU"), ("pixel_precision", "P"),
        ("pixel_recall", "R"), ("instances", "instances")]


def pixel_scores(model, cameras, ground_truth, classify, colours=None) -> Dict[str, float]:
    """Hungarian-matched mIoU / P / R of per-pixel instances (``classify``: rendered ``colours`` [P, C] -> ids [P];
    default colours: the embeddings) over the eval views; pixels under half covered are void."""
    import numpy as np

    from segsplat_ns.eval.metrics import hungarian_instance_metrics

    colours = model.gauss_params[model.feature_key].detach() if colours is None else colours
    predicted = []
    for v in range(len(cameras)):
        rendered, alpha = model.render_features(colours, cameras[v : v + 1].to(model.device))
        ids = classify(rendered.reshape(-1, rendered.shape[-1])).reshape(alpha.shape[:2])
        predicted.append(np.where(alpha[..., 0].cpu().numpy() >= 0.5, ids.cpu().numpy(), -1))
    scores = hungarian_instance_metrics(np.stack(predicted), np.stack(ground_truth.id_maps["object"]), ignore_label=0,
                                        pred_ignore_label=-1)  # fmt: skip
    return {"pixel_miou": scores["miou"], "pixel_precision": scores["precision"], "pixel_recall": scores["recall"]}


def kmeans(points, k: int, steps: int = 100, seed: int = 0):
    """k-means++ seeding (Arthur & Vassilvitskii), then Lloyd steps: centres [k, D]."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    centres = points[torch.randint(points.shape[0], (1,), generator=generator)]
    while centres.shape[0] < k:
        d2 = torch.cdist(points, centres).min(1).values.square()
        centres = torch.cat([centres, points[torch.multinomial(d2 / d2.sum(), 1, generator=generator)]])
    for _ in range(steps):
        owner = torch.cdist(points, centres).argmin(1)
        for c in range(k):
            if bool((owner == c).any()):
                centres[c] = points[owner == c].mean(0)
    return centres


def inference_schemes(model, data, cls_steps: int) -> List[Dict[str, object]]:
    """The paper's Table 4 on the run: prototypes, k-means over the per-view prototypes, a trained classifier."""
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    from segsplat_ns.methods.proto_saga import prototypes as P

    masks, cameras = data.load_train_masks(), data.train_dataset.cameras
    ground_truth, eval_cameras = data.eval_ground_truth(), data.eval_dataset.cameras
    for key, value in ROWS[0][1].items():
        setattr(model.config, key, value)
    model.train()
    bank = model.associate(cameras, masks)
    model.compute_prototypes(cameras, bank)
    count = model.prototypes.shape[0]
    embeddings = model.gauss_params[model.feature_key].detach()
    consistent, per_view = [], []
    for k in range(len(cameras)):
        rendered, _ = model.render_features(embeddings, cameras[k : k + 1].to(model.device))
        labels = P.relabel_consistent(model._label_maps[k].to(model.device), bank.view_ids[k])
        consistent.append(labels)
        sums, counts = P.view_prototype_sums(rendered.reshape(-1, rendered.shape[-1]), labels.reshape(-1), count)
        per_view.append((sums[counts > 0] / counts[counts > 0, None]).float())
    model.eval()
    rows = [{"row": "Table 4: prototypes (Eq. 18-19)", **pixel_scores(model, eval_cameras, ground_truth,
                                                                      lambda f: P.classify(f, model.prototypes))}]
    centres = kmeans(torch.cat(per_view), count)
    rows.append({"row": "Table 4: k-means over per-view prototypes",
                 **pixel_scores(model, eval_cameras, ground_truth, lambda f: P.classify(f, centres))})
    # Cls: a unified classifier trained on the associated masks with the embeddings (geometry frozen)
    original = model.gauss_params[model.feature_key].data.clone()
    classifier = torch.nn.Linear(original.shape[1], count).to(model.device)
    features = model.gauss_params[model.feature_key]
    optimiser = torch.optim.Adam([{"params": classifier.parameters(), "lr": 5e-4}, {"params": [features], "lr": 2.5e-3}])
    generator = torch.Generator().manual_seed(0)
    try:
        model.eval()  # frozen geometry: render_features detaches it outside training
        for _ in tqdm(range(cls_steps), desc="Table 4: Cls training", unit="step", leave=False):
            k = int(torch.randint(len(cameras), (1,), generator=generator))
            with torch.enable_grad():
                rendered, _ = model.render_features(features, cameras[k : k + 1].to(model.device))
                labels = consistent[k].reshape(-1)
                keep = labels >= 0
                if not bool(keep.any()):
                    continue
                loss = F.cross_entropy(classifier(rendered.reshape(-1, rendered.shape[-1])[keep]), labels[keep])
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
        with torch.no_grad():
            rows.append({"row": f"Table 4: Cls ({cls_steps} steps)",
                         **pixel_scores(model, eval_cameras, ground_truth, lambda f: classifier(f).argmax(-1))})
    finally:
        model.gauss_params[model.feature_key].data.copy_(original)
        features.grad = None
    for row in rows:
        row["instances"] = float(count)
        print(f"[ablation] {row['row']}: pixel mIoU {row['pixel_miou']:.3f} P {row['pixel_precision']:.3f} "
              f"R {row['pixel_recall']:.3f}", flush=True)
    return rows


def ablate(config: Path, cls_steps: int) -> List[Dict[str, object]]:
    import torch

    from segsplat_ns.eval.protocol import evaluate_segmentation
    from segsplat_ns.runs import load_run
    from segsplat_ns.segmenter import Segmenter

    _, pipeline, _, _ = load_run(config)
    model, data = pipeline.model, pipeline.datamanager
    masks, cameras = data.load_train_masks(), data.train_dataset.cameras
    rows = []
    with torch.no_grad():
        for name, settings in ROWS:
            for key, value in settings.items():
                setattr(model.config, key, value)
            model.train()  # as finish_training runs: at the end of the last training step
            model.compute_prototypes(cameras, model.associate(cameras, masks))
            model.eval()
            metrics, _ = evaluate_segmentation(Segmenter(model), data.eval_dataset.cameras, data.eval_ground_truth())
            rows.append({"run": str(config), "row": name, **settings, "instances": float(model.prototypes.shape[0]),
                         **{key: metrics[key] for key, _ in KEYS if key in metrics},
                         **pixel_scores(model, data.eval_dataset.cameras, data.eval_ground_truth(),
                                        model.pixel_instances, model.feature_colors().detach())})
            print(f"[ablation] {config.parent.name} {name}: " + ", ".join(
                f"{title} {rows[-1][key]:.3f}" for key, title in KEYS if key in rows[-1]), flush=True)
        if cls_steps > 0:
            rows += [{"run": str(config), **row} for row in inference_schemes(model, data, cls_steps)]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="+", type=Path, help="config.yml of finished proto-saga runs")
    parser.add_argument("--output-json", type=Path, default=None, help="also write every row here")
    parser.add_argument("--cls-steps", type=int, default=1500, help="training steps of Table 4's classifier (paper: 10K; 0: leave Table 4 out)")
    args = parser.parse_args()
    rows = [row for config in args.configs for row in ablate(config, args.cls_steps)]
    print("| run | row | " + " | ".join(title for _, title in KEYS) + " |")
    print("|---|---|" + "---|" * len(KEYS))
    runs = list(dict.fromkeys(row["run"] for row in rows))
    for row in rows:
        print(f"| run {runs.index(row['run'])} | {row['row']} | " + " | ".join(
            "–" if key not in row else f"{row[key]:.0f}" if key == "instances" else f"{row[key]:.3f}"
            for key, _ in KEYS) + " |")
    if args.output_json is not None:
        args.output_json.write_text(json.dumps({"configs": [str(c) for c in args.configs], "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
