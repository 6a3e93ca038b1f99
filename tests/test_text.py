"""Text prompts end to end on the tiny synthetic scene, whose language features are the scene's stand-in for CLIP:
Segmenter.text, ns-eval's text metrics, `segsplat segment --text`, `segsplat eval-benchmark --benchmark lerf-ovs`,
and the clear refusals (no text mode, no language features, empty or unknown prompts, nothing matching)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import BIN, run

from segsplat_ns.errors import NotSupported, PromptError
from segsplat_ns.eval.metrics import iou


@pytest.fixture(scope="module")
def text_segmenter(trained_pipeline):
    from segsplat_ns.language.context import language_context
    from segsplat_ns.segmenter import Segmenter

    trained_pipeline.eval()
    segmenter = Segmenter(trained_pipeline.model)
    segmenter.language = language_context(trained_pipeline)
    return segmenter


def test_text_prompt_selects_each_object(text_segmenter, trained_pipeline):
    from segsplat_ns.language.relevancy import localisation_hit

    assert "stand-in" in text_segmenter.language.description
    ground_truth = trained_pipeline.datamanager.eval_ground_truth()
    cameras = trained_pipeline.datamanager.eval_dataset.cameras
    views = ground_truth.text["object"]
    categories = sorted({c for targets in views for c in targets})
    assert categories == ["mushroom", "table"]
    means = []
    for category in categories:
        selection = text_segmenter.text(category)
        assert not selection.empty and selection.message is None and selection.facts["votes"] >= 1
        ious, hits = [], []
        for view, targets in enumerate(views):
            if category in targets:
                truth, boxes = targets[category]
                ious.append(iou(text_segmenter.text_mask(cameras[view : view + 1], selection).cpu().numpy(), truth))
                hits.append(localisation_hit(text_segmenter.relevancy_map(cameras[view : view + 1], selection).cpu().numpy(), boxes))
        print(category, np.round(ious, 3), hits)
        # the tiny run (150 feature steps at 48 px) answers "table" with its top on some runs (IoU about 0.5)
        assert np.mean(ious) > 0.4 and np.mean(hits) >= 0.75
        means.append(np.mean(ious))
    assert np.mean(means) > 0.5


def test_text_prompt_refusals(text_segmenter):
    with pytest.raises(PromptError, match="empty text prompt"):
        text_segmenter.text("   ")
    with pytest.raises(PromptError, match="stand-in"):
        text_segmenter.text("zebra")
    absent = text_segmenter.text("robot")  # in the stand-in's vocabulary, not in this scene
    assert absent.empty and "nothing in this scene matches" in absent.message


def test_text_needs_a_text_mode_and_language_features(trained_pipeline):
    from segsplat_ns.language.context import language_context
    from segsplat_ns.language.features import LanguageSourceError
    from segsplat_ns.language.sources import LanguageSourceConfig
    from segsplat_ns.segmenter import Segmenter

    segmenter = Segmenter(trained_pipeline.model)
    with pytest.raises(PromptError, match="language features"):
        segmenter.text("table")
    with pytest.raises(LanguageSourceError, match="language.source clip"):
        language_context(trained_pipeline, LanguageSourceConfig("none"))
    assert trained_pipeline.datamanager.config.language.source == "folder"  # the override did not stick


def test_binary_gaussian_says_it_has_no_text_mode(trained_binary):
    from segsplat_ns.runs import load_run
    from segsplat_ns.segmenter import Segmenter

    _, pipeline, _, _ = load_run(trained_binary, test_mode="test")
    with pytest.raises(NotSupported, match="does not answer text prompts.*saga"):
        Segmenter(pipeline.model).text("table")


def test_ns_eval_reports_text_metrics(trained, workdir):
    out = workdir / "eval_text.json"
    result = run([str(BIN / "ns-eval"), "--load-config", str(trained), "--output-path", str(out)], cwd=workdir)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    results = json.loads(out.read_text())["results"]
    print({k: round(v, 3) for k, v in results.items() if k.startswith("text_")})
    assert results["text_object_miou"] > 0.5 and results["text_object_localisation"] >= 0.75
    assert "text_part_miou" in results and "text_object_iou/table" in results
    assert not any("granularity" in key for key in results)  # saga picks no granularity per pixel


def test_segment_text_cli(trained, tmp_path):
    out = tmp_path / "lamp.ply"
    result = run([str(BIN / "segsplat"), "segment", "--load-config", str(trained), "--text", "mushroom", "--output", str(out)],
                 cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert out.exists() and out.with_suffix(".png").exists() and (tmp_path / "lamp_relevancy.png").exists()
    assert "stand-in" in result.stdout and "IoU against the ground-truth object 'mushroom'" in result.stdout
    value = float(result.stdout.split("IoU against the ground-truth object 'mushroom' in this view: ")[1].split()[0])
    # SAGA's best-mask query: on the tiny run the most relevant mask can be the cap (a stand-in part mask carrying
    # its object's concept, the "wrong level" flaw), and the query at the cap's scale selects the cap: IoU 0.34
    # against the whole mushroom in this view. Anything else in the selection would bring it lower.
    assert value > 0.25
    empty = run([str(BIN / "segsplat"), "segment", "--load-config", str(trained), "--text", " "], cwd=tmp_path)
    assert empty.returncode == 2 and "--text is empty" in empty.stderr and "Traceback" not in empty.stderr
    nothing = run([str(BIN / "segsplat"), "segment", "--load-config", str(trained), "--text", "robot"], cwd=tmp_path)
    assert nothing.returncode == 1 and "nothing in this scene matches" in nothing.stdout
    both = run([str(BIN / "segsplat"), "segment", "--load-config", str(trained), "--text", "table", "--pixel", "3", "4"],
               cwd=tmp_path)
    assert both.returncode == 2 and "either --pixel" in both.stderr


def test_eval_benchmark_lerf_ovs_scores_text_prompts(trained, trained_binary, scene, tmp_path):
    # the scene's own text ground truth is in LERF-OVS's layout: score it as that benchmark
    out = tmp_path / "ovs.json"
    result = run([str(BIN / "segsplat"), "eval-benchmark", "--load-config", str(trained), "--benchmark", "lerf-ovs",
                  "--root", str(scene / "gt" / "text" / "objects"), "--output-json", str(out)], cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    scores = json.loads(out.read_text())
    assert scores["miou"] > 0.5 and scores["localisation"] >= 0.75 and "stand-in" in scores["features"]
    refused = run([str(BIN / "segsplat"), "eval-benchmark", "--load-config", str(trained_binary), "--benchmark",
                   "lerf-ovs", "--root", str(scene / "gt" / "text" / "objects")], cwd=tmp_path)
    assert refused.returncode == 2 and "does not answer text prompts" in refused.stderr
    assert "Traceback" not in refused.stderr


@pytest.mark.skipif(not os.environ.get("SEGSPLAT_CLIP_CHECKPOINT"),
                    reason="real CLIP weights: set SEGSPLAT_CLIP_CHECKPOINT to an open_clip ViT-B-16 laion2b_s34b_b88k "
                           "checkpoint to run (none can be downloaded here)")
def test_real_clip_relevancy_prefers_the_right_colour():
    import torch

    from segsplat_ns.language.encoders import OpenClipEncoder
    from segsplat_ns.language.relevancy import CANONICAL_PHRASES, relevancy

    encoder = OpenClipEncoder.from_checkpoint(Path(os.environ["SEGSPLAT_CLIP_CHECKPOINT"]))
    crops = np.zeros((2, 224, 224, 3), dtype=np.uint8)
    crops[0, ..., 0] = 230  # red
    crops[1, ..., 2] = 230  # blue
    images = encoder.encode_images(crops)
    texts = encoder.encode_text(["red", "blue", *CANONICAL_PHRASES])
    red = relevancy(images, texts[0], texts[2:])
    blue = relevancy(images, texts[1], texts[2:])
    assert red[0] > red[1] and blue[1] > blue[0]
    assert torch.allclose(images.norm(dim=-1), torch.ones(2), atol=1e-3)
