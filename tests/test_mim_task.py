"""The masked image modeling task (``mim``) in detail: mask statistics and repeatability, query
construction from the mask, the normalized-pixel loss and the reconstruction on hand-made
batches, the encoder-only baseline and the xavier init of pre-training."""

from __future__ import annotations

import math

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import ImageList
from torch import nn

from glid.modeling.tasks import build_task
from glid.modeling.tasks.mim import (
    MaskedImageModelingTask,
    mask_unit_centres,
    normalized_unit_pixels,
    patchify,
    random_unit_mask,
    unit_index,
    unpatchify,
)
from tests.task_harness import tiny_task_cfg

ENCODER_ONLY = ("MODEL.GLID.MIM.USE_DECODER", False)


def _task(**overrides) -> MaskedImageModelingTask:
    kwargs = dict(
        unit_size=32,
        mask_ratio=0.6,
        norm_pix_loss=True,
        use_decoder=True,
        xavier_init=False,
        deep_supervision=True,
        encoder_stride=32,
    )
    kwargs.update(overrides)
    return MaskedImageModelingTask(**kwargs)


def _images(batch: int, height: int, width: int, seed: int = 0) -> ImageList:
    generator = torch.Generator().manual_seed(seed)
    # not already zero-mean / unit-std per unit, so that normalizing matters
    tensor = torch.randn(batch, 3, height, width, generator=generator) * 2.0 + 0.5
    return ImageList(tensor, [(height, width)] * batch)


def _model(*opts, seed: int = 0):
    cfg = tiny_task_cfg("mim", *opts)
    torch.manual_seed(seed)
    return cfg, build_model(cfg)


def _raw_images(batch: int, size: int = 128, seed: int = 0) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    return [
        {"image": torch.rand(3, size, size, generator=generator) * 255, "image_id": i}
        for i in range(batch)
    ]


# --------------------------------------------------------------------------------------------
# Masking statistics
# --------------------------------------------------------------------------------------------


def test_random_unit_mask_masks_exactly_k_units_per_image():
    torch.manual_seed(0)
    mask = random_unit_mask(16, (3, 5), 7)
    assert mask.shape == (16, 3, 5) and mask.dtype == torch.bool
    assert mask.flatten(1).sum(dim=1).tolist() == [7] * 16
    assert random_unit_mask(2, (3, 5), 15).all()  # every unit is a valid count
    for bad in (0, 16):
        with pytest.raises(ValueError, match=f"cannot mask {bad} of 3x5 units"):
            random_unit_mask(1, (3, 5), bad)


def test_every_unit_is_masked_with_frequency_close_to_the_ratio():
    torch.manual_seed(0)
    draws, units, k = 2000, 16, 10
    p = k / units
    frequency = random_unit_mask(draws, (4, 4), k).flatten(1).float().mean(dim=0)
    # Each unit's count is Binomial(draws, p): 5 standard deviations never trip by chance.
    tolerance = 5 * math.sqrt(p * (1 - p) / draws)
    assert (frequency - p).abs().max() < tolerance, frequency


def test_images_of_one_batch_get_different_masks():
    torch.manual_seed(0)
    mask = random_unit_mask(8, (4, 4), 10).flatten(1)
    distinct = {tuple(m.tolist()) for m in mask}
    assert len(distinct) == 8  # C(16, 10) = 8008 masks: 8 draws repeat with p < 0.4 %


def test_per_image_generators_give_repeatable_masks():
    def gens(*seeds):
        return [torch.Generator().manual_seed(s) for s in seeds]

    first = random_unit_mask(3, (4, 4), 10, gens(1, 2, 3))
    torch.manual_seed(123)  # the global generator plays no part
    again = random_unit_mask(3, (4, 4), 10, gens(1, 2, 3))
    assert torch.equal(first, again)
    # image i's mask comes from generator i alone
    alone = random_unit_mask(1, (4, 4), 10, gens(2))
    assert torch.equal(alone[0], first[1])
    assert not torch.equal(first[0], first[1])


@pytest.mark.parametrize(
    "ratio, grid, expected",
    [(0.6, (4, 4), 10), (0.75, (2, 3), 4), (0.4, (5, 5), 10), (0.3, (2, 3), 2), (0.01, (4, 4), 1)],
)
def test_num_masked_is_the_rounded_share_and_at_least_one(ratio, grid, expected):
    assert _task(mask_ratio=ratio).num_masked(grid) == expected


def test_evaluation_masks_are_a_function_of_the_image_id():
    task = _task().eval()
    images = _images(2, 128, 128)

    def masks(ids, seed):
        torch.manual_seed(seed)
        inputs = [{"image_id": i} for i in ids]
        return task.decoder_inputs(inputs, images).encoder_mask

    ab = masks([11, "img_22"], seed=0)
    assert torch.equal(ab, masks([11, "img_22"], seed=1))  # repeat across calls
    ba = masks(["img_22", 11], seed=2)
    assert torch.equal(ab[0], ba[1]) and torch.equal(ab[1], ba[0])  # not the batch position
    assert not torch.equal(ab[0], ab[1])
    many = torch.cat([masks([i, i + 1], seed=0) for i in range(0, 8, 2)]).flatten(1)
    assert len({tuple(m.tolist()) for m in many}) == 8  # different ids, different masks


def test_training_masks_come_from_the_global_generator():
    task = _task().train()
    images = _images(2, 128, 128)
    inputs = [{"image_id": 1}, {"image_id": 1}]

    def mask(seed):
        torch.manual_seed(seed)
        return task.decoder_inputs(inputs, images).encoder_mask

    assert torch.equal(mask(5), mask(5))
    assert not torch.equal(mask(5), mask(6))
    same_id = mask(5)
    assert not torch.equal(same_id[0], same_id[1])  # not drawn from the image id
    assert same_id.flatten(1).sum(1).tolist() == [10, 10]


# --------------------------------------------------------------------------------------------
# Query construction
# --------------------------------------------------------------------------------------------


def test_mask_unit_centres_on_a_non_square_grid():
    mask = torch.tensor(
        [
            [[0, 1, 0], [1, 0, 1]],
            [[1, 0, 0], [0, 1, 1]],
        ],
        dtype=torch.bool,
    )
    expected = torch.tensor(
        [
            [[1.5 / 3, 0.25], [0.5 / 3, 0.75], [2.5 / 3, 0.75]],
            [[0.5 / 3, 0.25], [1.5 / 3, 0.75], [2.5 / 3, 0.75]],
        ]
    )
    centres = mask_unit_centres(mask)
    torch.testing.assert_close(centres, expected, rtol=0, atol=1e-7)
    assert unit_index(centres, (2, 3)).tolist() == [[1, 3, 5], [0, 4, 5]]


@pytest.mark.parametrize("use_decoder", [True, False])
def test_decoder_inputs_match_the_mask(use_decoder):
    task = _task(mask_ratio=0.5, use_decoder=use_decoder).train()
    torch.manual_seed(0)
    inputs = task.decoder_inputs([{}, {}, {}], _images(3, 64, 96))  # 2x3 units
    assert inputs.encoder_mask.shape == (3, 2, 3) and inputs.encoder_mask.dtype == torch.bool
    assert inputs.query_points.shape == (3, 3, 2)
    assert torch.equal(inputs.query_points, mask_unit_centres(inputs.encoder_mask))
    assert inputs.with_cls is use_decoder
    assert inputs.mask_attention is False


def test_unit_grid_refuses_a_batch_that_does_not_tile():
    with pytest.raises(ValueError, match="does not tile into 64-pixel units"):
        _task(unit_size=64).unit_grid(_images(1, 96, 128))


def _capture(module: nn.Module, store: list, pre: bool = False):
    if pre:
        return module.register_forward_pre_hook(
            lambda m, args, kwargs: store.append((args, kwargs)), with_kwargs=True
        )
    return module.register_forward_hook(lambda m, args, out: store.append(out))


def test_decoder_gets_one_query_per_masked_unit_plus_cls_last():
    cfg, model = _model()
    model.train()
    decoder_calls, query_calls, query_outputs = [], [], []
    hooks = [
        _capture(model.decoder, decoder_calls, pre=True),
        _capture(model.queries, query_calls, pre=True),
        _capture(model.queries, query_outputs),
    ]
    torch.manual_seed(0)
    model(_raw_images(2))
    for h in hooks:
        h.remove()
    k, d = 10, cfg.MODEL.GLID.HIDDEN_DIM
    ((args, kwargs),) = decoder_calls
    query, query_pos = args[:2]
    assert query.shape == query_pos.shape == (2, k + 1, d)
    ((_, qkwargs),) = query_calls
    assert qkwargs["with_cls"] is True and qkwargs["points"].shape == (2, k, 2)
    content, position = query_outputs[0]
    assert torch.equal(query, content)
    assert torch.equal(content[:, -1], model.queries.cls_query.expand(2, -1))
    assert torch.equal(content[:, :k], model.queries.mask_query.expand(2, k, -1))
    assert torch.equal(position[:, -1], torch.zeros(2, d))
    expected = model.queries.embed_positions(qkwargs["points"])
    torch.testing.assert_close(position[:, :k], expected)


def test_encoder_sees_its_mask_token_at_the_masked_units():
    cfg, model = _model()
    model.train()
    backbone_calls, query_calls, embeddings, stage_inputs = [], [], [], []
    swin = model.backbone.swin
    hooks = [
        _capture(model.backbone, backbone_calls, pre=True),
        _capture(model.queries, query_calls, pre=True),
        _capture(swin.patch_embed, embeddings),
        swin.layers[0].register_forward_pre_hook(lambda m, args: stage_inputs.append(args[0])),
    ]
    torch.manual_seed(0)
    model(_raw_images(2))
    for h in hooks:
        h.remove()
    mask = backbone_calls[0][1]["mask"]
    assert mask.shape == (2, 4, 4) and mask.flatten(1).sum(1).tolist() == [10, 10]
    # the encoder's mask and the query positions describe the same units
    points = query_calls[0][1]["points"]
    assert torch.equal(mask_unit_centres(mask), points)
    # one 32x32 unit = 8x8 patch embeddings of 4x4 pixels
    patch_mask = mask.repeat_interleave(8, dim=1).repeat_interleave(8, dim=2)
    tokens, embedded = stage_inputs[0], embeddings[0]
    assert tokens.shape[:3] == (2, 32, 32)
    token = model.backbone.mask_token.reshape(-1)
    assert torch.equal(tokens[patch_mask], token.expand(int(patch_mask.sum()), -1))
    assert torch.equal(tokens[~patch_mask], embedded[~patch_mask])
    assert not torch.equal(tokens[patch_mask], embedded[patch_mask])


# --------------------------------------------------------------------------------------------
# Normalized-pixel loss on hand-made cases
# --------------------------------------------------------------------------------------------


def test_patchify_layout_is_units_row_major_with_channels_last():
    x = torch.arange(32.0).view(1, 2, 4, 4)  # value = 16 c + 4 y + x
    expected = torch.tensor(
        [
            [
                [0, 16, 1, 17, 4, 20, 5, 21],
                [2, 18, 3, 19, 6, 22, 7, 23],
                [8, 24, 9, 25, 12, 28, 13, 29],
                [10, 26, 11, 27, 14, 30, 15, 31],
            ]
        ],
        dtype=torch.float32,
    )
    assert torch.equal(patchify(x, 2), expected)
    assert torch.equal(unpatchify(expected, (2, 2), 2), x)


def test_patchify_unpatchify_round_trip_on_a_non_square_grid():
    x = torch.randn(2, 3, 6, 10, generator=torch.Generator().manual_seed(0))
    units = patchify(x, 2)
    assert units.shape == (2, 15, 12)
    # unit (row 1, col 3) of image 1
    assert torch.equal(units[1, 1 * 5 + 3], x[1, :, 2:4, 6:8].permute(1, 2, 0).reshape(-1))
    assert torch.equal(unpatchify(units, (3, 5), 2), x)


def test_normalized_unit_pixels_use_the_mean_and_unbiased_std():
    units = torch.tensor([[[1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 2.0, 6.0]]])
    first = [(v - 2.5) / math.sqrt(5 / 3 + 1e-6) for v in (1, 2, 3, 4)]
    second = [(v - 3.0) / math.sqrt(4.0 + 1e-6) for v in (2, 2, 2, 6)]
    expected = torch.tensor([[first, second]])
    torch.testing.assert_close(normalized_unit_pixels(units), expected)


# Hand-made 64x64 batch: 2x2 units of 32 px; image 0 masks units 0 and 3, image 1 units 1, 2.
HAND_MASK = torch.tensor([[[1, 0], [0, 1]], [[0, 1], [1, 0]]], dtype=torch.bool)
MASKED = [[(0, 0), (1, 1)], [(0, 1), (1, 0)]]  # (row, col) of the masked units per image


def _unit(images: torch.Tensor, b: int, r: int, c: int) -> torch.Tensor:
    """Pixels of one 32x32 unit, row-major with the channels last (written out, no patchify)."""
    return images[b, :, 32 * r : 32 * (r + 1), 32 * c : 32 * (c + 1)].permute(1, 2, 0).reshape(-1)


def _hand_targets(images: torch.Tensor, normalize: bool) -> torch.Tensor:
    rows = []
    for b, units in enumerate(MASKED):
        per_image = []
        for r, c in units:
            u = _unit(images, b, r, c)
            if normalize:
                u = (u - u.mean()) / (u.var(unbiased=True) + 1e-6).sqrt()
            per_image.append(u)
        rows.append(torch.stack(per_image))
    return torch.stack(rows)  # (2, 2, 3072)


def _predictions(pixels: torch.Tensor) -> dict:
    return {"pixels": pixels, "points": mask_unit_centres(HAND_MASK)}


def test_targets_are_the_masked_units_of_the_batch():
    images = _images(2, 64, 64)
    target = _task().targets(_predictions(torch.zeros(2, 2, 3072)), images)
    assert torch.equal(target, _hand_targets(images.tensor, normalize=False))


def test_loss_is_zero_on_the_normalized_target_and_c_squared_with_an_offset():
    task, images = _task(), _images(2, 64, 64)
    target = _hand_targets(images.tensor, normalize=True)
    error = task.reconstruction_error(_predictions(target), images)
    torch.testing.assert_close(error, torch.zeros(2), atol=1e-6, rtol=0)
    offset = torch.tensor([0.5, 2.0]).view(2, 1, 1)
    error = task.reconstruction_error(_predictions(target + offset), images)
    torch.testing.assert_close(error, torch.tensor([0.25, 4.0]), atol=1e-5, rtol=1e-5)
    losses = task.losses([_predictions(target + offset)], [{}, {}], images)
    torch.testing.assert_close(losses["loss_mim"], torch.tensor((0.25 + 4.0) / 2))


def test_only_masked_units_count():
    task, images = _task(), _images(2, 64, 64)
    prediction = _predictions(torch.randn(2, 2, 3072, generator=torch.Generator().manual_seed(1)))
    before = task.reconstruction_error(prediction, images)
    changed = images.tensor.clone()
    changed[0, :, :32, 32:] += 5.0  # image 0, unit 1: not masked
    changed[1, :, :32, :32] *= -3.0  # image 1, unit 0: not masked
    after = task.reconstruction_error(prediction, ImageList(changed, images.image_sizes))
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    changed[0, :, :32, :32] += torch.linspace(0, 1, 32)  # image 0, unit 0: masked
    after = task.reconstruction_error(prediction, ImageList(changed, images.image_sizes))
    assert after[0] != before[0] and after[1] == before[1]


def test_without_norm_pix_loss_the_target_is_the_normalized_image():
    task, images = _task(norm_pix_loss=False), _images(2, 64, 64)
    raw = _hand_targets(images.tensor, normalize=False)
    error = task.reconstruction_error(_predictions(raw), images)
    torch.testing.assert_close(error, torch.zeros(2), atol=0, rtol=0)
    error = task.reconstruction_error(_predictions(raw - 1.5), images)
    torch.testing.assert_close(error, torch.full((2,), 2.25))
    normalized = _hand_targets(images.tensor, normalize=True)
    assert (task.reconstruction_error(_predictions(normalized), images) > 0.1).all()


@pytest.mark.parametrize("enabled", [True, False])
def test_deep_supervision_gives_a_loss_per_earlier_layer(enabled):
    task, images = _task(deep_supervision=enabled), _images(2, 64, 64)
    target = _hand_targets(images.tensor, normalize=True)
    layers = [_predictions(target + c) for c in (1.0, 2.0, 3.0)]
    losses = task.losses(layers, [{}, {}], images)
    expected = {"loss_mim": 9.0}
    if enabled:
        expected.update({"loss_mim_0": 1.0, "loss_mim_1": 4.0})
    assert set(losses) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(losses[key], torch.tensor(value), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_inference_keeps_unmasked_units_and_fills_in_the_predictions(norm_pix_loss):
    task, images = _task(norm_pix_loss=norm_pix_loss).eval(), _images(2, 64, 64)
    pixels = torch.randn(2, 2, 3072, generator=torch.Generator().manual_seed(3))
    results = task.inference(_predictions(pixels), [{}, {}], images)
    error = task.reconstruction_error(_predictions(pixels), images)
    for b, result in enumerate(results):
        assert set(result) == {"mim_loss", "mim_mask", "reconstruction"}
        assert torch.equal(result["mim_mask"], HAND_MASK[b])
        torch.testing.assert_close(result["mim_loss"], error[b])
        rec = result["reconstruction"]
        assert rec.shape == (3, 64, 64)
        for r in range(2):
            for c in range(2):
                got = _unit(rec[None], 0, r, c)
                if (r, c) not in MASKED[b]:
                    assert torch.equal(got, _unit(images.tensor, b, r, c))
                    continue
                expected = pixels[b, MASKED[b].index((r, c))]
                if norm_pix_loss:
                    u = _unit(images.tensor, b, r, c)
                    expected = expected * (u.var() + 1e-6).sqrt() + u.mean()
                torch.testing.assert_close(got, expected)


def test_inference_crops_the_reconstruction_to_the_image_size():
    task = _task().eval()
    images = _images(2, 64, 64)
    images = ImageList(images.tensor, [(64, 64), (50, 40)])
    results = task.inference(_predictions(torch.zeros(2, 2, 3072)), [{}, {}], images)
    assert results[0]["reconstruction"].shape == (3, 64, 64)
    assert results[1]["reconstruction"].shape == (3, 50, 40)
    assert torch.equal(results[1]["reconstruction"][:, :32, :32], images.tensor[1, :, :32, :32])


def test_model_inference_repeats_for_the_same_image():
    _, model = _model()
    model.eval()
    inputs = _raw_images(2)
    with torch.no_grad():
        first = model(inputs)
        second = model(inputs[::-1])
    assert torch.equal(first[0]["mim_mask"], second[1]["mim_mask"])
    torch.testing.assert_close(first[0]["reconstruction"], second[1]["reconstruction"])
    assert first[0]["reconstruction"].shape == (3, 128, 128)


# --------------------------------------------------------------------------------------------
# Encoder-only baseline (MODEL.GLID.MIM.USE_DECODER False)
# --------------------------------------------------------------------------------------------


def test_encoder_only_head_reads_res5():
    cfg, model = _model(*ENCODER_ONLY)
    assert model.head.in_features == 8 * cfg.MODEL.SWIN.EMBED_DIM == 256
    assert model.head.out_features == 3 * 32 * 32
    _, decoder_model = _model()
    assert decoder_model.head.in_features == cfg.MODEL.GLID.HIDDEN_DIM


def test_encoder_head_input_gathers_the_masked_res5_tokens():
    task = _task(use_decoder=False)
    res5 = torch.arange(2 * 5 * 2 * 3, dtype=torch.float32).view(2, 5, 2, 3)
    mask = torch.tensor([[[0, 1, 0], [1, 0, 1]], [[1, 0, 0], [0, 1, 1]]], dtype=torch.bool)
    inputs = task.decoder_inputs([{}, {}], _images(2, 64, 96))
    inputs = type(inputs)(encoder_mask=mask, query_points=mask_unit_centres(mask))
    got = task.encoder_head_input({"res5": res5, "res4": None}, inputs)
    cells = [[(0, 1), (1, 0), (1, 2)], [(0, 0), (1, 1), (1, 2)]]
    expected = torch.stack([torch.stack([res5[b, :, r, c] for r, c in cells[b]]) for b in range(2)])
    assert got.shape == (2, 3, 5)
    assert torch.equal(got, expected)


def test_encoder_only_refuses_units_other_than_the_encoder_stride():
    cfg = tiny_task_cfg("mim", *ENCODER_ONLY, "MODEL.GLID.MIM.UNIT_SIZE", 64)
    with pytest.raises(ValueError, match="MODEL.GLID.MIM.UNIT_SIZE must be 32, got 64"):
        build_task(cfg)
    cfg = tiny_task_cfg("mim", "MODEL.GLID.MIM.UNIT_SIZE", 48)
    with pytest.raises(ValueError, match="MODEL.GLID.MIM.UNIT_SIZE must be a multiple of 32"):
        build_task(cfg)
    build_task(tiny_task_cfg("mim", "MODEL.GLID.MIM.UNIT_SIZE", 64))  # fine with the decoder


def test_encoder_only_freezes_and_skips_the_decoder_side():
    _, model = _model(*ENCODER_ONLY)
    model.train()
    skipped = (model.pixel_decoder, model.decoder, model.queries)
    for module in skipped:
        assert not any(p.requires_grad for p in module.parameters())
    assert model.backbone.mask_token.requires_grad
    assert all(p.requires_grad for p in model.head.parameters())
    for name, norm in model.backbone.output_norms.items():  # only res5 feeds the head
        assert all(p.requires_grad is (name == "res5") for p in norm.parameters()), name
    calls = []
    hooks = [m.register_forward_pre_hook(lambda m, a: calls.append(m)) for m in skipped]
    head_inputs = []
    hooks.append(model.head.register_forward_pre_hook(lambda m, a: head_inputs.append(a[0])))
    torch.manual_seed(0)
    losses = model(_raw_images(2))
    for h in hooks:
        h.remove()
    assert calls == []
    assert set(losses) == {"loss_mim"}
    assert head_inputs[0].shape == (2, 10, 256)
    losses["loss_mim"].backward()
    assert model.backbone.mask_token.grad is not None and model.head.weight.grad is not None
    assert model.task.decoder_inputs([{}], _images(1, 128, 128)).with_cls is False


# --------------------------------------------------------------------------------------------
# xavier init (MODEL.GLID.MIM.XAVIER_INIT)
# --------------------------------------------------------------------------------------------


def _block_linears(model) -> dict[str, list[nn.Linear]]:
    return {
        name: [m for m in blocks.modules() if isinstance(m, nn.Linear)]
        for name, blocks in (("encoder", model.backbone.swin.layers), ("decoder", model.decoder))
    }


def test_xavier_init_of_the_transformer_blocks():
    _, model = _model("MODEL.GLID.MIM.XAVIER_INIT", True)
    for name, linears in _block_linears(model).items():
        assert linears, name
        for m in linears:
            bound = math.sqrt(6.0 / (m.in_features + m.out_features))
            assert m.weight.abs().max() <= bound, name
            # uniform on [-bound, bound] has std bound / sqrt(3)
            assert abs(m.weight.std().item() / (bound / math.sqrt(3)) - 1) < 0.2, name
            if m.bias is not None:
                assert torch.count_nonzero(m.bias) == 0, name
    assert torch.count_nonzero(model.head.bias) > 0  # the head is not a Transformer block


def test_without_xavier_init_the_blocks_keep_their_own_init():
    _, model = _model("MODEL.GLID.MIM.XAVIER_INIT", False)
    linears = _block_linears(model)
    # timm's Swin: trunc-normal std 0.02, far below the xavier std of these layers
    for m in linears["encoder"]:
        assert m.weight.std() < 0.03
    # the decoder's FFN keeps PyTorch's default (non-zero) biases
    assert any(m.bias is not None and torch.count_nonzero(m.bias) > 0 for m in linears["decoder"])


def test_crop_size_must_tile_into_units():
    from detectron2.modeling import build_model

    from tests.task_harness import tiny_task_cfg

    cfg = tiny_task_cfg("mim", "INPUT.RANDOM_RESIZED_CROP.SIZE", "112")
    with pytest.raises(ValueError, match=r"RANDOM_RESIZED_CROP\.SIZE=112 must be a multiple"):
        build_model(cfg)


def test_numpy_integer_image_ids_give_the_same_eval_mask_as_python_ints():
    import numpy as np

    from glid.modeling.tasks.mim import _image_generator

    a = torch.randperm(16, generator=_image_generator(7))
    b = torch.randperm(16, generator=_image_generator(np.int64(7)))
    assert torch.equal(a, b)
