"""Hungarian matcher against brute force; criterion against hand-computed values."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from glid.modeling.criterion import SetCriterion, deep_supervision
from glid.modeling.losses import PointMaskLoss, SoftmaxClassLoss, dice_loss, sigmoid_ce_loss
from glid.modeling.matcher import (
    HungarianMatcher,
    PointMaskCost,
    SoftmaxClassCost,
    pairwise_dice,
    pairwise_sigmoid_ce,
)


def mask_matcher(cost_class=1.0, cost_mask=1.0, cost_dice=1.0, num_points=16):
    return HungarianMatcher(
        [SoftmaxClassCost(cost_class), PointMaskCost(cost_mask, cost_dice, num_points)]
    )


def mask_criterion(num_classes, matcher, num_points, deep_supervision=True):
    terms = [SoftmaxClassLoss(num_classes, 0.1), PointMaskLoss(num_points, 3.0, 0.75)]
    weights = {"loss_ce": 2.0, "loss_mask": 5.0, "loss_dice": 5.0}
    return SetCriterion(matcher, terms, weights, deep_supervision)


def test_pairwise_costs_match_per_pair_losses():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 10, generator=g, dtype=torch.float64)
    targets = (torch.rand(3, 10, generator=g) > 0.5).double()
    ce = pairwise_sigmoid_ce(logits, targets)
    dice = pairwise_dice(logits, targets)
    for i, j in itertools.product(range(4), range(3)):
        expected_ce = F.binary_cross_entropy_with_logits(logits[i], targets[j])
        assert ce[i, j].item() == pytest.approx(expected_ce.item(), rel=1e-12)
        p = logits[i].sigmoid()
        expected_dice = 1 - (2 * (p * targets[j]).sum() + 1) / (p.sum() + targets[j].sum() + 1)
        assert dice[i, j].item() == pytest.approx(expected_dice.item(), rel=1e-12)


def test_pairwise_costs_hand_values():
    zero = torch.zeros(1, 4)
    assert pairwise_sigmoid_ce(zero, torch.tensor([[1.0, 0, 1, 0]])).item() == pytest.approx(
        math.log(2)
    )
    # Confident and right: dice cost 0; p=0.5 against an empty target: 1 - 1 / (2 + 1).
    assert pairwise_dice(torch.full((1, 4), 50.0), torch.ones(1, 4)).item() == pytest.approx(
        0.0, abs=1e-12
    )
    assert pairwise_dice(zero, torch.zeros(1, 4)).item() == pytest.approx(1 - 1 / 3)


def brute_force_min_cost(cost: torch.Tensor) -> float:
    n, t = cost.shape
    best = math.inf
    if n >= t:
        for rows in itertools.permutations(range(n), t):
            best = min(best, sum(cost[r, c].item() for c, r in enumerate(rows)))
    else:
        for cols in itertools.permutations(range(t), n):
            best = min(best, sum(cost[r, c].item() for r, c in enumerate(cols)))
    return best


@pytest.mark.parametrize(
    "num_queries,num_targets,seed", [(4, 3, 0), (5, 5, 1), (3, 5, 2), (6, 1, 3)]
)
def test_hungarian_matches_brute_force(num_queries, num_targets, seed):
    g = torch.Generator().manual_seed(seed)
    matcher = mask_matcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=64)
    outputs = {
        "pred_logits": torch.randn(1, num_queries, 4, generator=g),
        "pred_masks": torch.randn(1, num_queries, 8, 8, generator=g),
    }
    target = {
        "labels": torch.randint(0, 3, (num_targets,), generator=g),
        "masks": (torch.rand(num_targets, 16, 16, generator=g) > 0.5).float(),
    }
    torch.manual_seed(seed)  # the matcher samples its points from the global generator
    cost = matcher.cost_matrix(outputs, target, 0)
    torch.manual_seed(seed)
    ((rows, cols),) = matcher(outputs, [target])
    assert len(rows) == len(set(rows.tolist())) == min(num_queries, num_targets)
    assert len(set(cols.tolist())) == len(cols)
    assert cost[rows, cols].sum().item() == pytest.approx(brute_force_min_cost(cost), rel=1e-6)


def test_matcher_handles_image_without_targets():
    matcher = mask_matcher(num_points=16)
    outputs = {"pred_logits": torch.randn(1, 3, 4), "pred_masks": torch.randn(1, 3, 8, 8)}
    ((rows, cols),) = matcher(
        outputs, [{"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 8, 8)}]
    )
    assert rows.numel() == cols.numel() == 0


def test_point_losses_hand_values():
    logits = torch.tensor([[0.0, 2.0], [-1.0, 1.0]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # BCE(0,1) = ln2, BCE(2,0) = ln(1+e^2), BCE(-1,0) = ln(1+e^-1), BCE(1,1) = ln(1+e^-1).
    expected = ((math.log(2) + math.log(1 + math.e**2)) / 2 + math.log(1 + math.exp(-1))) / 2
    assert sigmoid_ce_loss(logits, targets, num_masks=2).item() == pytest.approx(expected, rel=1e-6)
    s = torch.sigmoid(logits)
    d0 = 1 - (2 * s[0, 0] + 1) / (s[0].sum() + 1 + 1)
    d1 = 1 - (2 * s[1, 1] + 1) / (s[1].sum() + 1 + 1)
    assert dice_loss(logits, targets, num_masks=4).item() == pytest.approx(
        ((d0 + d1) / 4).item(), rel=1e-6
    )


def test_criterion_hand_computed():
    """Two queries, one target (class 1, empty mask): query 0 wins the match on class cost."""
    num_points = 100
    matcher = mask_matcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=num_points)
    criterion = mask_criterion(2, matcher, num_points, deep_supervision=True)
    logits = torch.tensor([[[0.0, 3.0, 0.0], [0.0, 0.0, 1.0]]])  # q0 favours class 1
    # Zero mask logits: BCE = ln2 at every point whatever the target; with an empty target the
    # dice is exactly 1 - 1 / (0.5 P + 1), wherever the points fall.
    outputs = {"pred_logits": logits, "pred_masks": torch.zeros(1, 2, 16, 16)}
    targets = [{"labels": torch.tensor([1]), "masks": torch.zeros(1, 32, 32)}]
    losses = criterion([outputs, outputs], targets)
    ce_q0 = math.log(1 + 1 + math.e**3) - 3  # target class 1
    ce_q1 = math.log(1 + 1 + math.e) - 1  # no-object class, weight 0.1
    expected_ce = (ce_q0 + 0.1 * ce_q1) / 1.1
    assert losses["loss_ce"].item() == pytest.approx(2.0 * expected_ce, rel=1e-5)
    assert losses["loss_mask"].item() == pytest.approx(5.0 * math.log(2), rel=1e-5)
    assert losses["loss_dice"].item() == pytest.approx(
        5.0 * (1 - 1 / (0.5 * num_points + 1)), rel=1e-5
    )
    assert set(losses) == {
        "loss_ce",
        "loss_mask",
        "loss_dice",
        "loss_ce_0",
        "loss_mask_0",
        "loss_dice_0",
    }
    assert losses["loss_ce_0"].item() == pytest.approx(losses["loss_ce"].item())


def test_criterion_without_targets_trains_no_object():
    criterion = mask_criterion(2, mask_matcher(num_points=16), 16, deep_supervision=False)
    logits = torch.zeros(1, 3, 3, requires_grad=True)
    outputs = {"pred_logits": logits, "pred_masks": torch.zeros(1, 3, 8, 8, requires_grad=True)}
    losses = criterion(
        [outputs], [{"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 8, 8)}]
    )
    assert losses["loss_ce"].item() == pytest.approx(2.0 * math.log(3), rel=1e-6)
    assert losses["loss_mask"].item() == 0.0 and losses["loss_dice"].item() == 0.0
    sum(losses.values()).backward()
    assert logits.grad[0, :, 2].lt(0).all()  # pushes towards no-object


def test_cost_matrix_hand_formula_with_fixed_points():
    """Total cost = w_class * -p(label) + w_mask * mean BCE + w_dice * dice, at given points."""
    cost = PointMaskCost(ce_weight=5.0, dice_weight=3.0, num_points=2)
    # 2x2 prediction logits per query; the points sit on pixel centres, so sampling is exact.
    pred = torch.tensor([[[2.0, -1.0], [0.5, 3.0]], [[-2.0, 1.0], [0.0, -3.0]]])
    target = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # one target
    coords = torch.tensor([[[0.25, 0.25], [0.75, 0.75]]])  # (x, y): pixels (0, 0) and (1, 1)
    got = cost.cost(pred, target, coords)
    for q in range(2):
        x = torch.stack([pred[q, 0, 0], pred[q, 1, 1]])
        t = torch.tensor([1.0, 1.0])
        bce = F.binary_cross_entropy_with_logits(x, t).item()
        p = x.sigmoid()
        dice = 1 - (2 * (p * t).sum().item() + 1) / (p.sum().item() + 2 + 1)
        assert got[q, 0].item() == pytest.approx(5.0 * bce + 3.0 * dice, rel=1e-6)
    logits = torch.tensor([[[1.0, 0.0, -1.0], [0.0, 2.0, 0.0]]])
    class_cost = SoftmaxClassCost(2.0)({"pred_logits": logits}, {"labels": torch.tensor([1])}, 0)
    expected = -2.0 * logits[0].softmax(-1)[:, 1]
    assert torch.allclose(class_cost[:, 0], expected)


def test_matcher_decided_by_mask_costs_alone():
    """Equal class scores: only the mask (CE) and dice costs can pick the right query."""
    masks = torch.zeros(2, 16, 16)
    masks[0, :, :8] = 1  # target 0: left half
    masks[1, :, 8:] = 1  # target 1: right half
    pred_masks = torch.stack([(2 * masks[1] - 1) * 8, (2 * masks[0] - 1) * 8])  # q0 right, q1 left
    outputs = {"pred_logits": torch.zeros(1, 2, 3), "pred_masks": pred_masks[None]}
    target = {"labels": torch.tensor([0, 1]), "masks": masks}
    for weights in ((1.0, 0.0), (0.0, 1.0)):  # CE alone, then dice alone
        torch.manual_seed(0)
        matcher = mask_matcher(cost_class=1.0, cost_mask=weights[0], cost_dice=weights[1])
        ((rows, cols),) = matcher(outputs, [target])
        assigned = dict(zip(rows.tolist(), cols.tolist()))
        assert assigned == {0: 1, 1: 0}, weights


def test_deep_supervision_suffixes_and_order():
    calls = []

    def layer_losses(predictions):
        calls.append(predictions["id"])
        return {"loss_x": torch.tensor(float(predictions["id"]))}

    losses = deep_supervision([{"id": 0}, {"id": 1}, {"id": 2}], layer_losses)
    assert calls == [2, 0, 1]  # the last layer first, then the auxiliary ones in order
    assert {k: v.item() for k, v in losses.items()} == {"loss_x": 2, "loss_x_0": 0, "loss_x_1": 1}
    assert set(deep_supervision([{"id": 0}, {"id": 1}], layer_losses, enabled=False)) == {"loss_x"}


def test_set_criterion_rejects_a_loss_without_weight():
    criterion = SetCriterion(mask_matcher(), [SoftmaxClassLoss(2, 0.1)], {"loss_mask": 1.0})
    outputs = {"pred_logits": torch.zeros(1, 2, 3), "pred_masks": torch.zeros(1, 2, 4, 4)}
    target = {"labels": torch.tensor([1]), "masks": torch.ones(1, 4, 4)}
    with pytest.raises(KeyError, match="loss_ce"):
        criterion([outputs], [target])
