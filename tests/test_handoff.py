"""The pre-training -> fine-tuning hand-off (glid.checkpoint): a pre-training checkpoint loads
into every task with exactly the task's linear head new; anything else that does not fit is an
error naming the keys; evaluation never runs on weights that did not all load."""

import os

import pytest
import torch
from detectron2.modeling import build_model

from glid.checkpoint import CheckpointMismatchError, GLIDCheckpointer
from tests.task_harness import registered_tasks, tiny_task_cfg

HEAD = ["head.bias", "head.weight"]


def _build(task: str, *opts, seed: int = 1):
    cfg = tiny_task_cfg(task, *opts)
    torch.manual_seed(seed)  # the pre-trained model is built with another seed
    return cfg, build_model(cfg)


def _save(cfg, model, folder: str, name: str = "model") -> str:
    GLIDCheckpointer.from_config(cfg, model, folder).save(name)
    return os.path.join(folder, f"{name}.pth")


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, synth_root):
    """A tiny pre-training (mim) checkpoint and the model it holds (the generated data is
    registered: a task may read its dataset's metadata, e.g. pose's keypoint flip map)."""
    cfg, model = _build("mim", seed=0)
    return _save(cfg, model, str(tmp_path_factory.mktemp("mim"))), model.state_dict()


def _fine_tune_load(cfg, model, path: str, folder: str = ""):
    checkpointer = GLIDCheckpointer.from_config(cfg, model, folder)
    checkpointer.resume_or_load(path, resume=False)
    return checkpointer.last_load


@pytest.mark.parametrize("task", [t for t in registered_tasks() if t != "mim"])
def test_pretraining_checkpoint_loads_into_every_task_with_only_the_head_new(task, pretrained):
    path, source = pretrained
    cfg, model = _build(task)
    report = _fine_tune_load(cfg, model, path)
    assert report.new == HEAD
    assert report.ignored == HEAD  # the pre-training head (pixels) is never loaded
    state = model.state_dict()
    loaded = [k for k in state if not k.startswith("head.")]
    assert loaded and all(torch.equal(state[k], source[k]) for k in loaded)
    assert not torch.equal(
        model.head.weight[:1], source["head.weight"][:1, : model.head.in_features]
    )


def test_head_of_the_same_task_loads_when_it_fits(tmp_path):
    cfg, model = _build("sem")
    path = _save(cfg, model, str(tmp_path))
    report = _fine_tune_load(cfg, _build("sem")[1], path)
    assert report.new == [] and report.ignored == []


def test_head_of_another_task_is_never_loaded_even_if_its_shape_fits(tmp_path):
    # det with 7 classes has a 7 + 4 = 11-wide head; cls with 11 classes too.
    cfg_det, det = _build("det", "MODEL.GLID.NUM_CLASSES", "7", seed=2)
    path = _save(cfg_det, det, str(tmp_path))
    cfg_cls, cls_model = _build("cls", "MODEL.GLID.NUM_CLASSES", "11")
    assert cls_model.head.weight.shape == det.head.weight.shape
    report = _fine_tune_load(cfg_cls, cls_model, path)
    assert report.new == HEAD and report.ignored == HEAD
    assert not torch.equal(cls_model.head.weight, det.head.weight)


def test_learnable_query_positions_and_task_buffers_count_as_new(pretrained):
    cfg, model = _build(
        "cls",
        "MODEL.GLID.LEARNABLE_QUERY_POSITIONS",
        "True",
        "MODEL.GLID.CLASSIFICATION.LINEAR_PROBE",
        "True",
    )
    report = _fine_tune_load(cfg, model, pretrained[0])
    assert report.new == sorted(
        HEAD
        + ["queries.grid_points"]
        + ["task.probe_norm.running_mean", "task.probe_norm.running_var"]
    )


def test_missing_or_misshaped_parameters_are_errors_that_name_them(pretrained, tmp_path):
    path, source = pretrained
    state = dict(source)
    del state["decoder.layers.0.norm_ffn.weight"]
    state["queries.mask_query"] = torch.zeros(1, 3)
    bad = str(tmp_path / "bad.pth")
    torch.save({"model": state, "glid_task": "mim"}, bad)
    cfg, model = _build("sem")
    with pytest.raises(CheckpointMismatchError) as error:
        _fine_tune_load(cfg, model, bad)
    message = str(error.value)
    assert "missing from the checkpoint (1):\n  decoder.layers.0.norm_ffn.weight" in message
    assert "queries.mask_query" in message and "(1, 3)" in message and "(1, 64)" in message
    assert "bad.pth" in message


def test_architecture_mismatch_is_an_error(pretrained):
    cfg, model = _build("sem", "MODEL.GLID.DECODER.NUM_LAYERS", "4")
    with pytest.raises(
        CheckpointMismatchError, match=r"(?s)missing from the checkpoint .*decoder\.layers\.3"
    ):
        _fine_tune_load(cfg, model, pretrained[0])
    cfg, model = _build("sem", "MODEL.GLID.DECODER.NUM_LAYERS", "2")
    with pytest.raises(CheckpointMismatchError, match=r"in the checkpoint but not in the model"):
        _fine_tune_load(cfg, model, pretrained[0])


def test_evaluation_requires_every_parameter(pretrained, tmp_path):
    cfg, model = _build("sem")
    checkpointer = GLIDCheckpointer.from_config(cfg, model, str(tmp_path), require_all=True)
    with pytest.raises(CheckpointMismatchError, match=r"mis-shaped .*\n  \('head\.bias'"):
        checkpointer.resume_or_load(pretrained[0], resume=False)
    with pytest.raises(CheckpointMismatchError, match="never evaluated"):
        checkpointer.resume_or_load("", resume=True)  # no weights, nothing to resume
    # a direct load (DefaultPredictor's way) is exact too
    with pytest.raises(CheckpointMismatchError, match=r"head\.weight"):
        GLIDCheckpointer.from_config(cfg, model).load(pretrained[0])


def test_resume_requires_every_parameter(pretrained, tmp_path):
    cfg, model = _build("sem")
    folder = str(tmp_path)
    mim_cfg, mim_model = _build("mim")
    GLIDCheckpointer.from_config(mim_cfg, mim_model, folder).save("model_0000009")
    checkpointer = GLIDCheckpointer.from_config(cfg, model, folder)
    with pytest.raises(CheckpointMismatchError, match="resume / evaluation / demo"):
        checkpointer.resume_or_load(pretrained[0], resume=True)


def test_encoder_scope_loads_the_encoder_and_nothing_else(pretrained, tmp_path):
    path, source = pretrained
    encoder_only = {k: v for k, v in source.items() if k.startswith("backbone.swin.")}
    converted = str(tmp_path / "swin.pth")
    torch.save({"model": encoder_only}, converted)
    cfg, model = _build("sem", "MODEL.GLID.WEIGHTS_SCOPE", "encoder")
    report = _fine_tune_load(cfg, model, converted)
    assert not any(k.startswith("backbone.swin.") for k in report.new)
    assert "backbone.mask_token" in report.new and "decoder.layers.0.norm_ffn.weight" in report.new
    assert report.ignored == []
    # a whole GLID checkpoint in encoder scope: the rest of it is ignored, not loaded
    cfg, model = _build("sem", "MODEL.GLID.WEIGHTS_SCOPE", "encoder")
    report = _fine_tune_load(cfg, model, path)
    assert "decoder.layers.0.ffn.0.weight" in report.ignored
    state = model.state_dict()
    assert not torch.equal(
        state["decoder.layers.0.ffn.0.weight"], source["decoder.layers.0.ffn.0.weight"]
    )
    assert torch.equal(state["backbone.mask_token"], source["backbone.mask_token"])
    del encoder_only["backbone.swin.layers.2.blocks.1.mlp.fc2.weight"]
    torch.save({"model": encoder_only}, converted)
    with pytest.raises(CheckpointMismatchError, match=r"layers\.2\.blocks\.1\.mlp\.fc2\.weight"):
        _fine_tune_load(cfg, _build("sem", "MODEL.GLID.WEIGHTS_SCOPE", "encoder")[1], converted)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_checkpoint_is_called_corrupt(pretrained, tmp_path, damage):
    data = open(pretrained[0], "rb").read()
    damaged = {"truncated": data[: len(data) // 2], "garbage": b"\x80\x02junk" * 50, "empty": b""}
    path = str(tmp_path / "broken.pth")
    open(path, "wb").write(damaged[damage])
    cfg, model = _build("sem")
    with pytest.raises(CheckpointMismatchError, match=r"broken\.pth is corrupt or truncated"):
        _fine_tune_load(cfg, model, path)


def test_bad_weights_scope_is_refused():
    cfg, model = _build("sem")
    with pytest.raises(ValueError, match="MODEL.GLID.WEIGHTS_SCOPE"):
        GLIDCheckpointer(model, task_name="sem", weights_scope="decoder")


def test_predictor_refuses_weights_that_do_not_all_load(pretrained):
    from glid.engine import GLIDPredictor

    cfg = tiny_task_cfg("sem", "MODEL.WEIGHTS", pretrained[0])
    with pytest.raises(CheckpointMismatchError, match=r"head\.weight"):
        GLIDPredictor(cfg)
    with pytest.raises(CheckpointMismatchError, match="no weights to load"):
        GLIDPredictor(tiny_task_cfg("sem"))


def test_predictor_runs_the_test_transform_of_the_task(pretrained):
    from glid.engine import GLIDPredictor

    predictor = GLIDPredictor(tiny_task_cfg("mim", "MODEL.WEIGHTS", pretrained[0]))
    image = (torch.arange(96 * 160 * 3) % 251).to(torch.uint8).view(96, 160, 3).numpy()
    out = predictor(image)
    # classification's centre crop: 128 x 128 (TEST_CROP_RATIO 1: short side 128, then crop)
    assert out["reconstruction"].shape == (3, 128, 128) and out["mim_mask"].shape == (4, 4)
