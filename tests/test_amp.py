"""Mixed precision (``SOLVER.AMP``, ``TEST.AMP``): every task trains one step and infers under
CPU bfloat16 autocast through GLID's trainer loop and meta-architecture, with the low-precision
compute checked (a linear layer's output dtype) and float32 predictions for post-processing."""

import itertools

import pytest
import torch
from detectron2.engine import SimpleTrainer
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from torch import nn

from glid.engine import GLIDAMPTrainer, build_optimizer, build_train_loop
from glid.modeling.precision import autocast_dtype, to_float32
from tests.task_harness import mapped, registered_tasks, tiny_task_cfg


def _record_linear_dtypes(model: nn.Module) -> list[torch.dtype]:
    """Output dtypes of the model's first linear layer, appended at each call."""
    seen = []
    linear = next(m for m in model.modules() if isinstance(m, nn.Linear))
    linear.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    return seen


def test_precision_keys_are_checked():
    assert autocast_dtype("bfloat16", "K", "cpu") is torch.bfloat16
    assert autocast_dtype("float16", "K", "cuda:0") is torch.float16
    with pytest.raises(ValueError, match=r"SOLVER.AMP.PRECISION must be one of .*'fp8'"):
        autocast_dtype("fp8", "SOLVER.AMP.PRECISION", "cpu")
    with pytest.raises(ValueError, match=r"TEST.AMP.PRECISION='float16' needs a GPU.*'cpu'"):
        autocast_dtype("float16", "TEST.AMP.PRECISION", "cpu")
    with pytest.raises(ValueError, match="needs a GPU"):
        opts = ("TEST.AMP.ENABLED", "True", "TEST.AMP.PRECISION", "float16")
        build_model(tiny_task_cfg("sem", *opts))


def test_to_float32_converts_only_low_precision_tensors():
    x = {"a": torch.ones(2, dtype=torch.bfloat16), "b": [torch.ones(1, dtype=torch.float16)]}
    x["c"] = (torch.ones(1, dtype=torch.float64), torch.ones(1, dtype=torch.long), None)
    y = to_float32(x)
    assert y["a"].dtype == torch.float32 and y["b"][0].dtype == torch.float32
    assert [getattr(v, "dtype", None) for v in y["c"]] == [torch.float64, torch.long, None]


def test_build_train_loop_follows_solver_amp(tiny_cfg):
    model = build_model(tiny_cfg)
    optimizer = build_optimizer(tiny_cfg, model)
    tiny_cfg.SOLVER.AMP.ENABLED = False
    assert type(build_train_loop(tiny_cfg, model, [], optimizer)) is SimpleTrainer
    tiny_cfg.SOLVER.AMP.ENABLED = True
    loop = build_train_loop(tiny_cfg, model, [], optimizer)
    assert isinstance(loop, GLIDAMPTrainer) and loop.precision is torch.bfloat16
    # bfloat16 has float32's range: no loss scaling, and an empty scaler state in checkpoints.
    assert not loop.grad_scaler.is_enabled() and loop.state_dict()["grad_scaler"] == {}
    tiny_cfg.SOLVER.AMP.PRECISION = "float16"
    with pytest.raises(ValueError, match="SOLVER.AMP.PRECISION='float16' needs a GPU"):
        build_train_loop(tiny_cfg, model, [], optimizer)


@pytest.mark.parametrize("task", registered_tasks())
def test_every_task_trains_and_infers_in_bfloat16_on_cpu(task, synth_root):
    opts = ["SOLVER.IMS_PER_BATCH", "2", "SOLVER.AMP.ENABLED", "True", "TEST.AMP.ENABLED", "True"]
    cfg = tiny_task_cfg(task, *opts)
    torch.manual_seed(0)
    model = build_model(cfg)
    dtypes = _record_linear_dtypes(model)
    batch = mapped(cfg, cfg.DATASETS.TRAIN[0], 2, is_train=True)
    optimizer = build_optimizer(cfg, model)
    model.train()
    loop = build_train_loop(cfg, model, itertools.repeat(batch), optimizer)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    with EventStorage(0) as storage:
        loop.iter = 0
        loop.run_step()
    assert dtypes and set(dtypes) == {torch.bfloat16}, dtypes
    assert all(torch.isfinite(p).all() for p in model.parameters())
    losses = {k: v.latest() for k, v in storage.histories().items() if "loss" in k}
    assert losses and all(v == v and abs(v) < float("inf") for v in losses.values()), losses
    changed = [n for n, p in model.named_parameters() if p.requires_grad and p.ne(before[n]).any()]
    assert changed, "no parameter moved in the bfloat16 step"

    dtypes.clear()
    model.eval()
    inputs = mapped(cfg, cfg.DATASETS.TEST[0], 1, is_train=False)
    with torch.no_grad():
        low = model(inputs)
        model.inference_dtype = None
        full = model(inputs)
    assert torch.bfloat16 in dtypes and torch.float32 in dtypes, dtypes
    assert _result_dtypes(low) == _result_dtypes(full)


def _result_dtypes(results: list[dict]) -> dict:
    """Every tensor field of the per-image results with its dtype (instances' fields too)."""
    out = {}
    for i, r in enumerate(results):
        for key, value in r.items():
            fields = value.get_fields() if hasattr(value, "get_fields") else {"": value}
            for name, v in fields.items():
                v = getattr(v, "tensor", v)
                if isinstance(v, torch.Tensor):
                    out[i, key, name] = v.dtype
    return out


def test_bfloat16_inference_matches_float32(synth_root):
    """Semantic scores of the same weights under TEST.AMP and in float32."""
    cfg = tiny_task_cfg("sem", "TEST.AMP.ENABLED", "True")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    inputs = mapped(cfg, cfg.DATASETS.TEST[0], 2, is_train=False)
    with torch.no_grad():
        low = [r["sem_seg"] for r in model(inputs)]
        model.inference_dtype = None
        full = [r["sem_seg"] for r in model(inputs)]
    for a, b in zip(low, full, strict=True):
        assert a.dtype == torch.float32 and a.shape == b.shape
        # Measured: largest score 3.2, error max 0.13 / mean 0.007, class map identical.
        err = (a - b).abs()
        assert 0 < err.mean() < 0.02 and err.max() < 0.08 * b.abs().max(), err  # > 0: bf16 ran
        assert (a.argmax(0) == b.argmax(0)).float().mean() > 0.99


def test_task_head_answers_in_float32_under_autocast():
    """Box deltas, logits and embeddings keep float32 (bfloat16 has 3 significant digits; in
    the learning check a bfloat16 head cost the detector ~40 % of its AP50)."""
    from glid.modeling.heads import LinearTaskHead

    torch.manual_seed(0)
    head = LinearTaskHead(16, {"box_delta": 4, "pred_logits": 3})
    x = torch.randn(2, 5, 16).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        answers = head.split(x)
    want = torch.nn.functional.linear(x.float(), head.weight, head.bias)
    assert all(a.dtype == torch.float32 for a in answers.values())
    assert torch.equal(torch.cat(list(answers.values()), -1), want)


def test_bfloat16_training_never_scales_the_loss(tiny_cfg, monkeypatch):
    """On a GPU machine too (detectron2's default scaler would switch itself on there)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    model = build_model(tiny_cfg)
    loop = GLIDAMPTrainer(model, [], build_optimizer(tiny_cfg, model), precision=torch.bfloat16)
    assert not loop.grad_scaler.is_enabled()
