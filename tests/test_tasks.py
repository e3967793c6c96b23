"""The mask-classification family on hand-set predictions: targets, attention masks and the
semantic inference (no-object must never win a pixel)."""

import math

import pytest
import torch
from detectron2.structures import BitMasks, ImageList, Instances

from glid.modeling.tasks import SemanticSegmentationTask, get_task_class
from glid.modeling.tasks.mask_classification import targets_from_instances
from tests.utils import make_tiny_cfg


@pytest.fixture(scope="module")
def sem_task():
    return SemanticSegmentationTask(make_tiny_cfg("MODEL.GLID.NUM_CLASSES", "3"))


def test_semantic_inference_hand_set_logits(sem_task):
    """q0: class 1, left half; q1: confident no-object over the whole image, class 2 second.
    Per pixel the score of class c is sum_q p_q(c) sigmoid(m_q), no-object dropped."""
    logits = torch.tensor([[0.0, 10.0, 0.0, 0.0], [0.0, 0.0, 5.0, 10.0]])
    masks = torch.full((2, 4, 4), 10.0)
    masks[0, :, 2:] = -10.0
    out = sem_task.inference_single(logits, masks, (4, 4), (4, 4))["sem_seg"]
    p = logits.softmax(-1)
    s = torch.sigmoid(torch.tensor(10.0))
    for x in range(4):
        m0 = s if x < 2 else 1 - s
        for c in range(3):
            expected = p[0, c] * m0 + p[1, c] * s
            assert out[c, 0, x].item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-7)
    labels = out.argmax(0)
    assert (labels[:, :2] == 1).all() and (labels[:, 2:] == 2).all()
    assert out.shape == (3, 4, 4)  # C scores: no channel for no-object


def test_semantic_inference_crops_padding_and_resizes(sem_task):
    logits = torch.tensor([[0.0, 0.0, 10.0, -10.0]])
    masks = torch.full((1, 8, 8), -10.0)
    masks[:, :4, :6] = 10.0  # the valid 4x6 region is class 2; padding says nothing
    out = sem_task.inference_single(logits, masks, (4, 6), (8, 12))["sem_seg"]
    assert out.shape == (3, 8, 12)
    assert (out.argmax(0) == 2).all()


def test_semantic_inference_resizes_mask_logits_before_the_sigmoid(sem_task):
    """Mask2Former's order: crop + bilinear resize of the mask logits, then sigmoid and the
    class sum (resizing the scores instead gives 0.75 where Mask2Former gives 0.993)."""
    logits = torch.tensor([[0.0, 20.0, 0.0, -20.0]])  # class 1, no-object improbable
    masks = torch.tensor([[[10.0, -10.0]]])  # one query, one row of 2 pixels
    out = sem_task.inference_single(logits, masks, (1, 2), (1, 4))["sem_seg"]
    # Output x = 1 samples input x = 0.25 (align_corners False): logit 0.75*10 - 0.25*10 = 5.
    expected = torch.sigmoid(torch.tensor([10.0, 5.0, -5.0, -10.0]))
    torch.testing.assert_close(out[1, 0], expected, rtol=1e-5, atol=1e-6)


def test_crop_and_resize_is_detectron2s_postprocess():
    from detectron2.modeling.postprocessing import sem_seg_postprocess

    from glid.modeling.tasks.mask_classification import crop_and_resize

    x = torch.randn(3, 8, 10)
    for image_size, output_size in [((6, 7), (6, 7)), ((6, 7), (12, 5)), ((8, 10), (8, 10))]:
        got = crop_and_resize(x, image_size, output_size)
        assert torch.equal(got, sem_seg_postprocess(x, image_size, *output_size))
        assert got.shape == (3, *output_size)


def test_attention_mask_of_mask_classification(sem_task):
    pred = torch.tensor([[[[3.0, -3.0], [-3.0, 3.0]]]])  # (1, 1, 2, 2)
    blocked = sem_task.attention_mask({"pred_masks": pred}, (2, 2))
    assert blocked.tolist() == [[[False, True, True, False]]]
    up = sem_task.attention_mask({"pred_masks": pred}, (4, 4))
    assert up.shape == (1, 1, 16) and up[0, 0, 0].item() is False and up[0, 0, 3].item() is True


def test_targets_are_zero_padded_to_the_batch():
    inst = Instances((2, 3))
    inst.gt_classes = torch.tensor([4])
    inst.gt_masks = BitMasks(torch.ones(1, 2, 3, dtype=torch.bool))
    images = ImageList(torch.zeros(1, 3, 4, 5), [(2, 3)])
    (target,) = targets_from_instances([{"instances": inst}], images)
    assert target["labels"].tolist() == [4]
    assert target["masks"].shape == (1, 4, 5)
    assert target["masks"].sum().item() == 6 and target["masks"][0, :2, :3].all()
    with pytest.raises(KeyError, match="a.png"):
        targets_from_instances([{"file_name": "a.png"}], images)


def test_semantic_head_split_and_class_count_in_one_place():
    cfg = make_tiny_cfg("MODEL.GLID.NUM_CLASSES", "5")
    splits = get_task_class("sem").head_splits(cfg)
    assert splits == {"pred_logits": 6, "mask_embed": cfg.MODEL.GLID.MASK_DIM}
    task = SemanticSegmentationTask(cfg)
    assert task.criterion.loss_terms[0].num_classes == 5
    assert math.isclose(task.criterion.loss_terms[0].class_weights[-1].item(), 0.1, rel_tol=1e-6)


def test_register_task_checks_the_class():
    from glid.modeling.tasks import TASK_REGISTRY, GLIDTask, register_task

    with pytest.raises(ValueError, match="unknown task"):
        register_task("nosuchtask")
    with pytest.raises(TypeError, match="not a GLIDTask"):
        register_task("cls")(type("NotATask", (), {"dataset_mapper": "X"}))
    with pytest.raises(TypeError, match="dataset_mapper"):
        register_task("cls")(type("NoMapperTask", (GLIDTask,), {}))
    assert "NoMapperTask" not in TASK_REGISTRY and "NotATask" not in TASK_REGISTRY
