"""`segsplat bench`, `segsplat bench-latency` and `segsplat eval-benchmark`, driven through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import BIN, run
from PIL import Image


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("bench")
    args = [str(BIN / "segsplat"), "bench", "--workdir", str(workdir / "out"), "--seeds", "3", "--methods", "saga",
            "--image-size", "48", "--num-objects", "2", "--num-train-views", "12", "--num-eval-views", "4",
            "--rgb-steps", "300", "--feature-steps", "150"]
    result = run(args, cwd=workdir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return workdir, args, result


def test_bench_writes_one_row_per_run_in_markdown_and_json(bench_run):
    workdir, _, result = bench_run
    record = json.loads((workdir / "out" / "bench.json").read_text())
    # each preset (the paper's, ours), then each inference variant the method declares (an ablation row on the
    # same run)
    rows = record["rows"]
    assert [r["method"] for r in rows] == ["saga (paper)", "saga (paper, text-query majority)", "saga (segsplat)",
                                           "saga (segsplat, text-query majority)"]
    assert rows[2]["feature_stage_s"] != rows[0]["feature_stage_s"]  # two trainings
    rows = rows[2:]
    row = rows[0]
    assert row["seed"] == 3 and rows[1]["feature_stage_s"] == row["feature_stage_s"]
    for r in rows:  # text prompts on the scene's stand-in for CLIP
        assert 0.0 <= r["text_object_miou"] <= 1.0 and 0.0 <= r["text_object_localisation"] <= 1.0
    assert rows[1]["seg_object_miou"] == pytest.approx(row["seg_object_miou"])  # clicks do not use the variant
    assert row["segmentation_bytes_per_gaussian"] == 128.0  # 32 float32 affinity features, nothing else per Gaussian
    assert row["psnr"] > 20.0
    for key in ("seg_object_miou", "seg_part_miou", "decomp_object_miou", "decomp_part_precision", "decomp_part_recall"):
        assert 0.0 <= row[key] <= 1.0, key
    assert row["seg_object_miou"] > 0.5  # the click protocol finds the objects even after this short training
    assert row["rgb_stage_s"] > 0 and row["feature_stage_s"] > 0 and row["click_ms"] > 0
    table = (workdir / "out" / "bench.md").read_text()
    assert "| saga (paper) | 3 |" in table and "| saga (segsplat, text-query majority) | 3 |" in table
    assert "object mIoU" in table
    assert "text object mIoU" in table and record["command"] in table


def test_bench_reuses_finished_runs_and_matches_ns_eval(bench_run):
    workdir, args, _ = bench_run
    first = json.loads((workdir / "out" / "bench.json").read_text())["rows"][0]
    again = run(args, cwd=workdir)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "ns-train" not in again.stdout  # nothing retrained
    second = json.loads((workdir / "out" / "bench.json").read_text())["rows"][0]
    assert second["feature_stage_s"] == first["feature_stage_s"]

    config = next((workdir / "out" / "seed3" / "runs" / "saga-paper").rglob("config.yml"))
    result = run([str(BIN / "ns-eval"), "--load-config", str(config), "--output-path", str(workdir / "eval.json")], cwd=workdir)
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads((workdir / "eval.json").read_text())["results"]
    for key in ("psnr", "seg_object_miou", "seg_part_miou", "decomp_part_miou"):
        assert results[key] == pytest.approx(first[key], abs=1e-4), key  # rendering sums threads in any order


def test_bench_passes_everything_after_extra_args_to_ns_train(tmp_path):
    """ns-train flags start with "--": they must reach the bench as its extra args, not as its own options."""
    result = run([str(BIN / "segsplat"), "bench", "--workdir", str(tmp_path), "--methods", "no-such-method",
                  "--extra-args", "--pipeline.model.lambda-guiding", "0"], cwd=tmp_path)
    assert "Unrecognized options" not in result.stdout + result.stderr
    assert result.returncode != 0 and "unknown method 'no-such-method'" in result.stdout + result.stderr
    assert "saga" in result.stderr and "binary-gaussian" in result.stderr  # the registered methods are named


def test_bench_latency_table_and_json(tmp_path):
    out = tmp_path / "latency.json"
    result = run([str(BIN / "segsplat"), "bench-latency", "--sizes", "2000", "20000", "--repeats", "3",
                  "--click-size", "320", "240", "--output-json", str(out)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads(out.read_text())
    assert [row["gaussians"] for row in record["rows"]] == [2000, 20000]
    for row in record["rows"]:
        methods = row["methods"]
        assert {"saga", "binary-gaussian"} <= set(methods)  # every registered method with a probe
        saga = methods["saga"]
        assert saga["reference"] == "direct fp32" and set(saga["ms"]) == {"direct fp32", "new scale", "same scale",
                                                                     "text prompt"}
        assert saga["facts"]["mask differences vs direct"] == 0 and saga["selected"] > 0  # same selection as direct
        # small scenes stay fp32: a click reads the fp32 features and the kept scale's norms (4 bytes a Gaussian)
        assert saga["bytes_read"]["stored"] == saga["bytes_read"]["fp32"] + 4 * row["gaussians"]
        assert saga["speedup_vs_reference"]["same scale"] == pytest.approx(
            saga["ms"]["direct fp32"] / saga["ms"]["same scale"])
        assert saga["times_bound"]["same scale"]["fp32"] == pytest.approx(
            saga["ms"]["same scale"] / saga["bound_ms"]["fp32"])
        binary = methods["binary-gaussian"]
        assert binary["reference"] is None and set(binary["ms"]) == {"new level", "same level"}
        # binary-gaussian's click at level 2 selects one small group of the random codes
        assert 0 < binary["selected"] < row["gaussians"] / 100
        gags = methods["gags"]  # text prompts on one decoded feature per Gaussian, and on three (decoded-levels every)
        assert set(gags["ms"]) == {"text prompt", "text prompt, decoded-levels every"}
        assert gags["bytes_read"]["stored, decoded-levels every"] == 3 * gags["bytes_read"]["stored"] == 3 * 1024 * row["gaussians"]
        # across methods: each method's fastest case (and SAGA's reference) against the other's fastest
        cross = {(entry["method"], entry["case"], entry["against"]): entry["ratio"] for entry in row["cross"]}
        fastest = binary["ms"][binary["fastest"]]
        assert cross[("saga", "direct fp32", "binary-gaussian")] == pytest.approx(saga["ms"]["direct fp32"] / fastest)
        assert cross[("saga", saga["fastest"], "binary-gaussian")] == pytest.approx(saga["ms"][saga["fastest"]] / fastest)
    assert record["read_bandwidth_gb_s"] > 0.1
    # the whole click, pixel -> selection, for every method with a click probe (all five answer clicks)
    assert record["click_camera"] == [320, 240]
    for row in record["whole_click"]:
        assert set(row["methods"]) == {"saga", "binary-gaussian", "gags", "lift", "proto-saga"}
        assert row["means_read_ms"] > 0
        for ms in row["methods"].values():
            assert set(ms) == {"full-render click", "pixel click, first", "pixel click, new view", "pixel click, same view",
                               "scoring alone"}
            assert all(value > 0 for value in ms.values())
    assert "Whole click, pixel -> selection (320×240 camera" in result.stdout
    assert "| 20,000 |" in result.stdout and "same level" in result.stdout and "Across methods" in result.stdout
    # the language cache's bytes per image: measured on the synthetic scene, and the file format's formula
    language = record["language_cache"]
    assert language["measured"]["hw"] == [96, 96] and language["measured"]["masks"] > 0
    assert language["formula"][1] == {"hw": [728, 986], "masks": 150, "bytes": 256 + 6 * 728 * 986 + 1024 * 150,
                                      "s_bytes": 128 + 6 * 728 * 986}
    assert "Language cache" in result.stdout


def test_eval_benchmark_spin_nerf_layout_on_a_trained_run(trained, scene, tmp_path):
    """The tiny scene's ground truth for one object, written as SPIn-NeRF annotations, scored through the CLI."""
    meta = json.loads((scene / "gt" / "meta.json").read_text())
    labels = tmp_path / "spin" / "tinyscene" / "label"
    labels.mkdir(parents=True)
    target = meta["objects"][0]["id"]
    for frame in meta["eval_frames"]:
        stem = Path(frame).stem
        mask = np.asarray(Image.open(scene / "gt" / "objects" / f"{stem}.png")) == target
        if mask.sum() > 20:
            Image.fromarray((mask * 255).astype(np.uint8)).save(labels / f"{stem}.png")
    out = tmp_path / "scores.json"
    result = run([str(BIN / "segsplat"), "eval-benchmark", "--load-config", str(trained), "--benchmark", "spin-nerf",
                  "--root", str(tmp_path / "spin"), "--scene", "tinyscene", "--output-json", str(out)], cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    scores = json.loads(out.read_text())
    assert len(scores["targets"]) == len(list(labels.iterdir()))
    assert scores["miou"] > 0.5 and scores["maccuracy"] > 0.9
    assert "mIoU" in result.stdout


def test_eval_benchmark_says_what_to_do_with_missing_annotations_and_unknown_views(trained, tmp_path):
    result = run([str(BIN / "segsplat"), "eval-benchmark", "--load-config", str(trained), "--benchmark", "lerf-ovs",
                  "--root", str(tmp_path)], cwd=tmp_path)
    assert result.returncode != 0 and "frame_*.json" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
    labels = tmp_path / "other"
    labels.mkdir()
    mask = np.zeros((48, 48), dtype=np.uint8)
    mask[10:20, 10:20] = 255
    Image.fromarray(mask).save(labels / "IMG_0001.png")
    result = run([str(BIN / "segsplat"), "eval-benchmark", "--load-config", str(trained), "--benchmark", "spin-nerf",
                  "--root", str(labels)], cwd=tmp_path)
    assert result.returncode != 0 and "IMG_0001" in result.stderr + result.stdout
    assert "original names" in result.stderr + result.stdout and "Traceback" not in result.stderr
