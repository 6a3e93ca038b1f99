"""Metrics on hand-made masks with hand-computed answers."""

import numpy as np
import pytest
import torch

from segsplat_ns.eval.metrics import (
    accuracy,
    boundary_iou,
    hungarian_instance_metrics,
    iou,
    mask_to_boundary,
    mean_iou,
)


def box(h, w, r0, r1, c0, c1):
    m = np.zeros((h, w), dtype=bool)
    m[r0:r1, c0:c1] = True
    return m


def test_iou_one_third_and_accuracy():
    pred = box(4, 4, 0, 2, 0, 2)  # 4 px
    gt = box(4, 4, 0, 2, 1, 3)  # 4 px, overlap 2 -> union 6
    assert iou(pred, gt) == pytest.approx(1 / 3)
    assert iou(gt, pred) == pytest.approx(1 / 3)
    # 4 pixels differ out of 16
    assert accuracy(pred, gt) == pytest.approx(12 / 16)
    # torch tensors and 0/255 uint8 masks give the same answers
    assert iou(torch.from_numpy(pred), torch.from_numpy(gt)) == pytest.approx(1 / 3)
    assert iou(pred.astype(np.uint8) * 255, gt.astype(np.uint8)) == pytest.approx(1 / 3)


def test_empty_cases():
    empty = np.zeros((4, 4), dtype=bool)
    full = np.ones((4, 4), dtype=bool)
    assert iou(empty, empty) == 1.0
    assert boundary_iou(empty, empty) == 1.0
    assert iou(empty, full) == 0.0
    assert iou(full, empty) == 0.0
    assert boundary_iou(empty, full) == 0.0
    assert accuracy(empty, empty) == 1.0
    assert accuracy(empty, full) == 0.0


def test_batches_and_mean_iou():
    a = box(4, 4, 0, 2, 0, 2)
    b = box(4, 4, 0, 2, 1, 3)
    pred = np.stack([a, a])
    gt = np.stack([a, b])
    assert iou(pred, gt) == pytest.approx((1 + 1 / 3) / 2)
    assert mean_iou([(a, a), (a, b)]) == pytest.approx((1 + 1 / 3) / 2)
    assert accuracy(pred, gt) == pytest.approx((1 + 0.75) / 2)
    with pytest.raises(ValueError):
        mean_iou([])
    with pytest.raises(ValueError):
        iou(np.zeros((4, 4), bool), np.zeros((4, 5), bool))


def test_boundary_band_hand_computed():
    # 6x6 image: diagonal 8.49 * 0.02 -> d = max(1, 0) = 1
    sq = box(6, 6, 1, 5, 1, 5)  # 4x4 square
    ring = mask_to_boundary(sq)
    assert ring.sum() == 12  # 16 minus the 2x2 interior
    assert not ring[2:4, 2:4].any()
    # a mask touching the image border has a boundary along the border too
    full = np.ones((6, 6), dtype=bool)
    assert mask_to_boundary(full).sum() == 36 - 16
    # 100x100: diagonal 141.4 * 0.02 = 2.83 -> d = 3, band 3 px wide
    big = box(100, 100, 20, 80, 20, 80)  # 60x60
    assert mask_to_boundary(big).sum() == 60 * 60 - 54 * 54


def test_boundary_iou_shifted_square_hand_computed():
    gt = box(6, 6, 1, 5, 1, 5)  # rows 1-4, cols 1-4
    pred = box(6, 6, 1, 5, 2, 6)  # shifted right by one pixel
    # rings of 12 px each; they share rows 1 and 4 at cols 2-4 (6 px); the side columns never coincide
    # -> 6 / (12 + 12 - 6) = 1/3, while the plain IoU is 12 / 20
    assert boundary_iou(pred, gt) == pytest.approx(1 / 3)
    assert iou(pred, gt) == pytest.approx(12 / 20)
    assert boundary_iou(gt, gt) == 1.0


def test_boundary_matches_opencv_reference_recipe():
    """Same result as the cv2 recipe of Gaussian Grouping's eval (pad 1 zero px, erode 3x3 d times)."""
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    for h, w in [(37, 53), (120, 90)]:
        d = max(1, int(round(0.02 * np.sqrt(h**2 + w**2))))
        for _ in range(5):
            m = (rng.random((h, w)) < 0.7).astype(np.uint8)
            m[: h // 3] = 1  # a big blob touching the border
            padded = cv2.copyMakeBorder(m, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
            eroded = cv2.erode(padded, np.ones((3, 3), np.uint8), iterations=d)[1 : h + 1, 1 : w + 1]
            ref = (m - eroded).astype(bool)
            np.testing.assert_array_equal(mask_to_boundary(m.astype(bool)), ref)


def test_hungarian_swapped_labels_are_perfect():
    gt = np.zeros((4, 4), dtype=np.int64)
    gt[:, :2] = 1
    gt[:, 2:] = 2
    pred = np.where(gt == 1, 9, 4)  # same partition, arbitrary ids
    r = hungarian_instance_metrics(pred, gt, ignore_label=None)
    assert (r["miou"], r["precision"], r["recall"]) == (1.0, 1.0, 1.0)
    r = hungarian_instance_metrics(torch.from_numpy(pred), torch.from_numpy(gt))
    assert (r["miou"], r["precision"], r["recall"]) == (1.0, 1.0, 1.0)


def test_hungarian_split_instance():
    # GT: instance 1 = cols 0-1 (8 px), instance 2 = cols 2-3 (8 px)
    gt = np.zeros((4, 4), dtype=np.int64)
    gt[:, :2] = 1
    gt[:, 2:] = 2
    # prediction: instance 1 intact (id 7); instance 2 split into top half (id 3) and bottom half (id 5)
    pred = np.full((4, 4), 7)
    pred[:2, 2:] = 3
    pred[2:, 2:] = 5
    r = hungarian_instance_metrics(pred, gt)
    # matched IoUs: 1.0 and 4/8 = 0.5 (not > 0.5) -> 1 hit of 2 GT and 3 predictions
    assert r["num_gt"] == 2 and r["num_pred"] == 3 and r["num_hits"] == 1
    assert r["recall"] == pytest.approx(1 / 2)
    assert r["precision"] == pytest.approx(1 / 3)
    assert r["miou"] == pytest.approx((1.0 + 0.5) / 2)


def test_hungarian_ignore_label_and_unmatched_gt():
    # GT: 0 = void (top row), 1 = rows 1-3 cols 0-1, 2 = rows 1-3 cols 2-3
    gt = np.zeros((4, 4), dtype=np.int64)
    gt[1:, :2] = 1
    gt[1:, 2:] = 2
    # prediction covers everything with one id, plus a different id only inside the void row
    pred = np.full((4, 4), 1)
    pred[0, :] = 8
    r = hungarian_instance_metrics(pred, gt, ignore_label=0)
    # void pixels are dropped, so id 8 is not a prediction; id 1 vs GT 1: 6 / 12 = 0.5 and GT 2 unmatched
    assert r["num_pred"] == 1 and r["num_gt"] == 2
    assert r["miou"] == pytest.approx((0.5 + 0.0) / 2)
    assert r["num_hits"] == 0 and r["precision"] == 0.0 and r["recall"] == 0.0
    # Gaga's released eval (no ignore label): background 0 is an instance too
    r = hungarian_instance_metrics(pred, gt, ignore_label=None)
    assert r["num_gt"] == 3 and r["num_pred"] == 2
    # GT0 (row 0, 4 px) <-> pred 8 (row 0): IoU 1; GT1 / GT2 vs pred 1 (12 px): 6/12 each, one gets it
    assert r["miou"] == pytest.approx((1.0 + 0.5 + 0.0) / 3)
    assert r["num_hits"] == 1


def test_hungarian_pred_ignore_label_and_empty():
    gt = np.zeros((4, 4), dtype=np.int64)
    gt[:, :2] = 1
    pred = np.full((4, 4), -1)
    pred[:, :1] = 2  # covers half of GT 1
    r = hungarian_instance_metrics(pred, gt, pred_ignore_label=-1)
    assert r["num_pred"] == 1 and r["miou"] == pytest.approx(4 / 8)  # -1 pixels are misses, not an instance
    # nothing on either side -> perfect; GT but no prediction -> zeros
    z = np.zeros((4, 4), dtype=np.int64)
    assert hungarian_instance_metrics(z, z)["miou"] == 1.0
    r = hungarian_instance_metrics(np.full((4, 4), -1), gt, pred_ignore_label=-1)
    assert (r["miou"], r["precision"], r["recall"]) == (0.0, 0.0, 0.0)


def test_hungarian_multi_view_iou_is_mean_over_views_where_gt_appears():
    gt = np.zeros((3, 4, 4), dtype=np.int64)
    pred = np.zeros((3, 4, 4), dtype=np.int64)
    gt[0, :, :2] = 1
    pred[0, :, :2] = 1  # view 0: IoU 1
    gt[1, :, :2] = 1
    pred[1, :, :1] = 1  # view 1: IoU 0.5
    # view 2: GT 1 absent (all void) -> does not count, even though pred has id 1 nowhere
    r = hungarian_instance_metrics(pred, gt)
    assert r["num_gt"] == 1
    assert r["miou"] == pytest.approx(0.75)
    # pred id 0 also covers a non-void pixel (view 1, col 1), so it is a second predicted instance
    assert r["num_pred"] == 2
    assert r["num_hits"] == 1 and r["precision"] == 0.5 and r["recall"] == 1.0


def test_hungarian_matches_brute_force():
    """On random label maps the Hungarian optimum equals the best of all one-to-one assignments."""
    import itertools

    rng = np.random.default_rng(1)
    for _ in range(10):
        gt = rng.integers(0, 4, size=(2, 6, 6))
        pred = rng.integers(0, 4, size=(2, 6, 6))
        r = hungarian_instance_metrics(pred, gt, ignore_label=None)
        gt_ids, pred_ids = np.unique(gt), np.unique(pred)
        m = np.zeros((len(gt_ids), len(pred_ids)))
        for i, g in enumerate(gt_ids):
            for j, p in enumerate(pred_ids):
                vals = [iou(pred[b] == p, gt[b] == g) for b in range(2) if (gt[b] == g).any()]
                m[i, j] = np.mean(vals)
        best = max(
            sum(m[i, perm[i]] for i in range(len(gt_ids)))
            for perm in itertools.permutations(range(len(pred_ids)), len(gt_ids))
        )
        assert r["miou"] == pytest.approx(best / len(gt_ids))
