"""The image classification task (``cls``) in detail: the head reads ``[CLS]`` (or pooled res5),
linear probing, mixup / cutmix, the losses computed by hand, inference and config errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import ImageList
from torch import nn

from glid.modeling.tasks import build_task
from glid.modeling.tasks.classification import ClassificationTask
from tests.task_harness import tiny_task_cfg

ENCODER = ("MODEL.GLID.CLASSIFICATION.FEATURES", "encoder")
PROBE = ("MODEL.GLID.CLASSIFICATION.LINEAR_PROBE", True)


def _task(**overrides) -> ClassificationTask:
    kwargs = dict(num_classes=6, features="cls_query", head_in_features=8)
    kwargs.update(overrides)
    return ClassificationTask(**kwargs)


def _model(*opts, seed: int = 0):
    cfg = tiny_task_cfg("cls", *opts)
    torch.manual_seed(seed)
    return cfg, build_model(cfg)


def _inputs(labels: list[int], size: int = 64, seed: int = 0) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    return [
        {"image": torch.rand(3, size, size, generator=generator) * 255, "class_id": c}
        for c in labels
    ]


def _hooked_forward(model, inputs, modules: dict[str, nn.Module], pre=()):
    """Run ``model(inputs)`` recording every output (or, for names in ``pre``, the first
    positional input) of ``modules``."""
    seen = {name: [] for name in modules}
    hooks = []
    for name, module in modules.items():
        if name in pre:
            hook = module.register_forward_pre_hook(lambda m, a, n=name: seen[n].append(a[0]))
        else:
            hook = module.register_forward_hook(lambda m, a, out, n=name: seen[n].append(out))
        hooks.append(hook)
    try:
        result = model(inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return result, seen


def _log_softmax(row: list[float]) -> list[float]:
    top = max(row)
    lse = top + math.log(sum(math.exp(v - top) for v in row))
    return [v - lse for v in row]


# --------------------------------------------------------------------------------------------
# What the head reads
# --------------------------------------------------------------------------------------------


def test_decoder_head_input_is_the_last_query():
    hidden = torch.randn(2, 5, 8)
    task = _task()
    assert torch.equal(task.decoder_head_input(hidden), hidden[:, -1:])
    assert task.decoder_inputs([{}], None).with_cls is True
    answers = {"logits": torch.randn(2, 1, 6)}
    assert torch.equal(task.predictions(answers, None, None)["logits"], answers["logits"][:, 0])


def test_model_head_reads_only_the_cls_output_of_every_layer():
    cfg, model = _model()
    model.train()
    losses, seen = _hooked_forward(
        model, _inputs([0, 5]), {"norm": model.decoder.norm, "head": model.head}, pre=("head",)
    )
    d, n = cfg.MODEL.GLID.HIDDEN_DIM, cfg.MODEL.GLID.NUM_QUERIES
    assert len(seen["head"]) == len(seen["norm"]) == cfg.MODEL.GLID.DECODER.NUM_LAYERS
    for normed, head_input in zip(seen["norm"], seen["head"]):
        assert normed.shape == (2, n + 1, d)  # the grid queries and [CLS]
        assert head_input.shape == (2, 1, d)
        assert torch.equal(head_input, normed[:, -1:])
    assert set(losses) == {"loss_cls"}  # the last layer only


def test_encoder_setting_averages_res5():
    task = _task(features="encoder", head_in_features=4)
    res5 = torch.arange(2 * 4 * 2 * 3, dtype=torch.float32).view(2, 4, 2, 3)
    expected = torch.stack([res5[b].reshape(4, 6).sum(dim=1) / 6 for b in range(2)])[:, None]
    got = task.encoder_head_input({"res5": res5}, task.decoder_inputs([{}, {}], None))
    assert got.shape == (2, 1, 4)
    torch.testing.assert_close(got, expected)
    assert task.uses_decoder is False and task.decoder_inputs([{}], None).with_cls is False


def test_encoder_setting_in_the_model_skips_the_decoder():
    cfg, model = _model(*ENCODER)
    assert model.head.in_features == 8 * cfg.MODEL.SWIN.EMBED_DIM
    model.train()
    skipped = {"pixel_decoder": model.pixel_decoder, "decoder": model.decoder}
    skipped["queries"] = model.queries
    _, seen = _hooked_forward(
        model,
        _inputs([1, 2]),
        {"backbone": model.backbone, "head": model.head, **skipped},
        pre=("head",),
    )
    for name, module in skipped.items():
        assert seen[name] == [], name
        assert not any(p.requires_grad for p in module.parameters()), name
    res5 = seen["backbone"][0]["res5"]
    torch.testing.assert_close(seen["head"][0], res5.mean(dim=(2, 3))[:, None])


# --------------------------------------------------------------------------------------------
# Linear probing
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("features", ["cls_query", "encoder"])
def test_linear_probe_trains_only_the_head(features):
    cfg, model = _model(*PROBE, "MODEL.GLID.CLASSIFICATION.FEATURES", features)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(trainable) == ["head.bias", "head.weight"]
    norm = model.task.probe_norm
    assert isinstance(norm, nn.BatchNorm1d) and norm.affine is False
    assert list(norm.parameters()) == []
    assert norm.num_features == model.head.in_features
    assert _model()[1].task.probe_norm is None


def test_probe_norm_normalizes_the_head_input_over_the_batch():
    task = _task(linear_probe=True, head_in_features=3).train()
    hidden = torch.randn(6, 4, 3) * torch.tensor([5.0, 0.1, 2.0]) + torch.tensor([3.0, -1.0, 0.0])
    out = task.decoder_head_input(hidden)
    assert out.shape == (6, 1, 3)
    torch.testing.assert_close(out.mean(dim=(0, 1)), torch.zeros(3), atol=1e-5, rtol=0)
    var = out.squeeze(1).var(dim=0, unbiased=False)
    torch.testing.assert_close(var, torch.ones(3), atol=1e-3, rtol=0)
    # the normalized thing is [CLS] (the last query)
    last = hidden[:, -1]
    expected = (last - last.mean(0)) / (last.var(0, unbiased=False) + 1e-6).sqrt()
    torch.testing.assert_close(out.squeeze(1), expected, atol=1e-4, rtol=1e-4)


def test_probe_norm_in_the_model_gives_zero_mean_unit_variance():
    _, model = _model(*PROBE)
    model.train()
    _, seen = _hooked_forward(model, _inputs([0, 1, 2, 3]), {"head": model.head}, pre=("head",))
    x = seen["head"][-1].squeeze(1)
    assert x.shape == (4, model.head.in_features)
    torch.testing.assert_close(x.mean(0), torch.zeros(x.shape[1]), atol=1e-4, rtol=0)
    torch.testing.assert_close(x.var(0, unbiased=False), torch.ones(x.shape[1]), atol=0.05, rtol=0)


# --------------------------------------------------------------------------------------------
# Mixup / cutmix
# --------------------------------------------------------------------------------------------


def _batch(count: int, seed: int = 0) -> ImageList:
    tensor = torch.randn(count, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    return ImageList(tensor, [(32, 32)] * count)


def test_without_mixing_prepare_batch_changes_nothing():
    task, images = _task(), _batch(3)
    inputs = [{"class_id": 0}, {"class_id": 1}, {"class_id": 2}]
    out_images, out_inputs = task.prepare_batch(images, inputs)
    assert out_images is images and out_inputs is inputs


def test_mixup_gives_mixed_images_and_soft_targets():
    np.random.seed(0)  # timm draws lambda with numpy
    task, images = _task(mixup=0.8), _batch(4)
    original = images.tensor.clone()
    inputs = [{"class_id": c, "image_id": i} for i, c in enumerate([0, 1, 2, 3])]
    mixed, out = task.prepare_batch(images, inputs)
    assert torch.equal(images.tensor, original)  # the input batch is not mixed in place
    soft = torch.stack([x["soft_target"] for x in out])
    assert soft.shape == (4, 6)
    torch.testing.assert_close(soft.sum(dim=1), torch.ones(4))
    lam = soft[0, 0].item()
    assert 0.0 < lam < 1.0
    partner = [3, 2, 1, 0]  # timm mixes each image with the flipped batch
    for i in range(4):
        expected = torch.zeros(6)
        expected[i] += lam
        expected[partner[i]] += 1 - lam
        torch.testing.assert_close(soft[i], expected)
        torch.testing.assert_close(mixed.tensor[i], lam * original[i] + (1 - lam) * original[3 - i])
    assert [x["image_id"] for x in out] == [0, 1, 2, 3]
    assert mixed.image_sizes == images.image_sizes


def test_cutmix_pastes_a_box_and_weights_the_targets_by_area():
    task = _task(cutmix=1.0, label_smoothing=0.1)
    shares = []
    for seed in range(4):
        np.random.seed(seed)  # timm draws the box with numpy
        images = _batch(2, seed)
        original = images.tensor.clone()
        mixed, out = task.prepare_batch(images, [{"class_id": 4}, {"class_id": 1}])
        own = (mixed.tensor[0] == original[0]).all(dim=0).float().mean().item()
        pasted = (mixed.tensor[0] == original[1]).all(dim=0).float().mean().item()
        assert own + pasted == pytest.approx(1.0)
        # smoothed one-hot targets (off value 0.1 / 6) weighted by the pixel shares
        expected = torch.full((6,), 0.1 / 6)
        expected[4] += own * (1 - 0.1)
        expected[1] += (1 - own) * (1 - 0.1)
        torch.testing.assert_close(out[0]["soft_target"], expected)
        torch.testing.assert_close(out[1]["soft_target"].sum(), torch.tensor(1.0))
        shares.append(own)
    assert any(0 < own < 1 for own in shares), shares


def test_mixing_refuses_an_odd_batch():
    with pytest.raises(ValueError, match="even batch per process, got 3"):
        _task(mixup=0.8).prepare_batch(_batch(3), [{"class_id": 0}] * 3)


def test_model_trains_on_mixed_batches():
    np.random.seed(0)
    _, model = _model("MODEL.GLID.CLASSIFICATION.MIXUP", 0.8)
    model.train()
    losses = model(_inputs([0, 1]))
    assert set(losses) == {"loss_cls"} and torch.isfinite(losses["loss_cls"])


# --------------------------------------------------------------------------------------------
# Losses computed by hand
# --------------------------------------------------------------------------------------------

LOGITS = [[1.0, 2.0, 0.5], [-1.0, 0.0, 3.0]]


def _losses(task: ClassificationTask, inputs: list[dict]) -> torch.Tensor:
    predictions = [{"logits": torch.zeros(2, 3)}, {"logits": torch.tensor(LOGITS)}]
    return task.losses(predictions, inputs, None)["loss_cls"]


def test_soft_target_loss_is_the_soft_cross_entropy():
    task = _task(num_classes=3)
    soft = [[0.7, 0.0, 0.3], [0.1, 0.6, 0.3]]
    inputs = [{"class_id": 9, "soft_target": torch.tensor(s)} for s in soft]
    expected = sum(
        -sum(t * lp for t, lp in zip(targets, _log_softmax(row)))
        for targets, row in zip(soft, LOGITS)
    )
    torch.testing.assert_close(_losses(task, inputs), torch.tensor(expected / 2))


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_hard_label_loss_with_label_smoothing(smoothing):
    task = _task(num_classes=3, label_smoothing=smoothing)
    labels = [1, 2]
    expected = 0.0
    for label, row in zip(labels, LOGITS):
        log_p = _log_softmax(row)
        expected += (1 - smoothing) * -log_p[label] + smoothing / 3 * -sum(log_p)
    got = _losses(task, [{"class_id": c} for c in labels])
    torch.testing.assert_close(got, torch.tensor(expected / 2))


@pytest.mark.parametrize("labels", [[0, 3], [-1, 1]])
def test_class_ids_out_of_range_are_refused(labels):
    with pytest.raises(ValueError, match=r"out of range for MODEL\.GLID\.NUM_CLASSES=3"):
        _losses(_task(num_classes=3), [{"class_id": c} for c in labels])


@pytest.mark.parametrize("labels", [[0, 6], [-1, 2]])
def test_class_ids_out_of_range_are_refused_with_mixing_on(labels):
    task = _task(mixup=0.8)
    with pytest.raises(ValueError, match=r"MODEL\.GLID\.NUM_CLASSES=6"):
        task.prepare_batch(_batch(2), [{"class_id": c} for c in labels])


def test_missing_class_id_is_refused():
    with pytest.raises(KeyError, match="has no 'class_id'"):
        _losses(_task(num_classes=3), [{"class_id": 0}, {"file_name": "x.jpg"}])


# --------------------------------------------------------------------------------------------
# Inference and config errors
# --------------------------------------------------------------------------------------------


def test_inference_returns_logits_per_image():
    logits = torch.randn(3, 6)
    results = _task().inference({"logits": logits}, [{}, {}, {}], None)
    assert len(results) == 3
    for row, result in zip(logits, results):
        assert set(result) == {"classification"} and torch.equal(result["classification"], row)


def test_model_inference_per_image_does_not_depend_on_the_batch():
    cfg, model = _model()
    model.eval()
    inputs = _inputs([0, 1])
    with torch.no_grad():
        both = model(inputs)
        alone = model(inputs[1:])
    assert len(both) == 2
    for result in both:
        assert result["classification"].shape == (cfg.MODEL.GLID.NUM_CLASSES,)
    torch.testing.assert_close(both[1]["classification"], alone[0]["classification"])


def test_unknown_features_value_is_refused():
    cfg = tiny_task_cfg("cls", "MODEL.GLID.CLASSIFICATION.FEATURES", "pooled")
    with pytest.raises(ValueError, match=r"MODEL\.GLID\.CLASSIFICATION\.FEATURES must be one of"):
        build_task(cfg)
