"""Proto-SaGa's association maths (Eq. 9-16) on hand-made examples."""

from __future__ import annotations

import torch

from segsplat_ns.methods.proto_saga.association import (
    associate,
    front_set,
    instance_gaussians,
    overlap_scores,
    proto_saga_set,
    semantic_set,
)


def test_instance_sets_eq9_10_15_16_by_hand():
    """A 4x4 view: instance 0 on the left half, 1 on the right. Gaussians 0-9 project left, 10-19 right, 20 is off
    the image. Of instance 0's ten: the nearest half by depth (Eq. 10, delta_d 0.5) is 0-4, the 20 % most probable
    (Eq. 15, delta_s 0.2) are 9 and 7; Eq. 16 is their union."""
    labels = torch.tensor([[0, 0, 1, 1]] * 4)
    pixels = torch.tensor([[i % 2, i % 4] for i in range(10)] + [[2 + i % 2, i % 4] for i in range(10)] + [[-1, 0]])
    g0 = instance_gaussians(pixels, labels, 0)
    assert g0.tolist() == list(range(10))
    assert instance_gaussians(pixels, labels, 1).tolist() == list(range(10, 20))
    assert instance_gaussians(pixels, labels, 2).numel() == 0
    depths = torch.arange(21, dtype=torch.float32)
    assert front_set(g0, depths, 0.5).tolist() == [0, 1, 2, 3, 4]
    assert front_set(g0, depths, 0.25).tolist() == [0, 1, 2]  # rank < 2.5 -> ranks 0, 1, 2
    probs = torch.zeros(21)
    probs[9], probs[7], probs[8] = 0.9, 0.8, 0.1
    assert semantic_set(g0, probs, 0.2).tolist() == [9, 7]
    assert proto_saga_set(g0, depths, probs, 0.5, 0.2).tolist() == [0, 1, 2, 3, 4, 7, 9]


def test_memory_bank_eq11_13_two_boxes():
    """View 1 sees boxes A and B (the bank starts from them, Eq. 11). View 2 sees A again from another side (4 of
    its 7 Gaussians are in the bank's A: gamma 4/7 > 0.1, merged, Eq. 13) and something new (gamma 0: new id).
    View 3: an instance sharing exactly 10 % with B is not above delta 0.1: a new id."""
    A1, B1 = torch.arange(0, 7), torch.arange(10, 17)
    A2, C2 = torch.arange(3, 10), torch.arange(20, 25)
    B3 = torch.cat([torch.tensor([15]), torch.arange(30, 39)])
    assert overlap_scores(A2, [A1, B1], 40).tolist() == [4 / 7, 0.0]
    bank = associate([[A1, B1], [A2, C2], [B3]], num_gaussians=40, delta=0.1)
    assert bank.view_ids == [[0, 1], [0, 2], [3]]
    assert bank.entries[0].tolist() == list(range(10))
    assert bank.entries[1].tolist() == list(range(10, 17)) and bank.entries[2].tolist() == list(range(20, 25))
    labels = bank.labels(40)
    assert labels[:10].tolist() == [0] * 10 and labels[20:25].tolist() == [2] * 5 and int(labels[17]) == -1
