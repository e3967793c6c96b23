"""Reliability under bad data and faults (issue 11): the demo's inputs and outputs, the image
reader, bad training samples, divergence, atomic checkpoints and schedule checks."""

import os
import sys

import numpy as np
import pytest
from PIL import Image

from tests.utils import REPO_ROOT, TINY_CONFIG

# ---- demo: every input gets its own output, a bad one does not stop the others ----


class _FakeVis:
    def __init__(self, image_bgr):
        self.image = image_bgr

    def save(self, path):
        Image.fromarray(np.ascontiguousarray(self.image[:, :, ::-1])).save(path)


class _FakeDemo:
    """Stands in for the model: the demo's file handling is what is tested here."""

    def __init__(self, cfg, **kwargs):
        pass

    def run_on_image(self, image_bgr, path=None):
        return {"sem_seg": None}, _FakeVis(image_bgr)


@pytest.fixture
def demo_script(monkeypatch):
    sys.path.insert(0, os.path.join(REPO_ROOT, "demo"))
    import demo

    monkeypatch.setattr(demo, "VisualizationDemo", _FakeDemo)
    return demo


def _write_rgb(path, value, size=(12, 8)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", size, (value, value, value)).save(path)


def _demo(demo_script, inputs, output):
    argv = ["--config-file", TINY_CONFIG, "--input", *inputs, "--output", str(output)]
    return demo_script.main(argv)


def test_demo_same_name_in_two_folders_gets_two_outputs(demo_script, tmp_path):
    _write_rgb(str(tmp_path / "a" / "x.png"), 10)
    _write_rgb(str(tmp_path / "b" / "x.png"), 200)
    _write_rgb(str(tmp_path / "b" / "x.jpg"), 100)
    written = _demo(demo_script, [str(tmp_path / "a"), str(tmp_path / "b")], tmp_path / "vis")
    assert len(written) == len(set(written)) == 3
    assert all(os.path.isfile(p) for p in written)
    means = sorted(int(np.asarray(Image.open(p)).mean()) for p in written)
    assert means[0] == 10 and means[2] == 200  # each input's own picture, none overwritten


def test_demo_unreadable_input_is_reported_and_the_rest_run(demo_script, tmp_path, caplog):
    _write_rgb(str(tmp_path / "in" / "a.png"), 10)
    (tmp_path / "in" / "b.png").write_bytes(b"not an image")
    _write_rgb(str(tmp_path / "in" / "c.png"), 30)
    with pytest.raises(SystemExit) as exc:
        _demo(demo_script, [str(tmp_path / "in")], tmp_path / "vis")
    assert exc.value.code not in (0, None)
    assert "b.png" in str(exc.value.code) and "1 of 3" in str(exc.value.code)
    assert sorted(os.listdir(tmp_path / "vis")) == ["a_glid.png", "c_glid.png"]


def test_demo_empty_input_is_an_error(demo_script, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no image"):
        _demo(demo_script, [str(tmp_path / "empty")], tmp_path / "vis")
    with pytest.raises(FileNotFoundError, match="matches no file"):
        _demo(demo_script, [str(tmp_path / "nothing*.jpg")], tmp_path / "vis")


def test_demo_reads_a_16_bit_png_scaled(demo_script, tmp_path):
    """The demo reads through glid.data.image_io: a mid-grey 16-bit PNG is mid-grey, not
    white."""
    path = tmp_path / "in" / "deep.png"
    path.parent.mkdir()
    Image.fromarray(np.full((8, 12), 32768, np.uint16)).save(path)
    (out,) = _demo(demo_script, [str(path)], tmp_path / "vis")
    assert np.abs(np.asarray(Image.open(out)).astype(int) - 128).max() <= 1


# ---- images: read faithfully or refused with the file named ----


def _ramp16(path):
    values = (np.arange(48 * 64).reshape(48, 64) * 21).astype(np.uint16)  # 0 .. 64491
    Image.fromarray(values).save(path)
    return values


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    from glid.data.image_io import read_image

    values = _ramp16(tmp_path / "deep.png")
    rgb = read_image(str(tmp_path / "deep.png"), "RGB")
    assert rgb.shape == (48, 64, 3) and rgb.dtype == np.uint8
    expected = np.round(values / 257.0)
    assert np.abs(rgb[..., 0].astype(int) - expected).max() <= 1
    assert (rgb[..., 0] == rgb[..., 2]).all()
    bgr = read_image(str(tmp_path / "deep.png"), "BGR")
    assert (bgr == rgb).all()  # grey: the same in both orders


def test_16_bit_png_reaches_the_model_scaled(tmp_path):
    """Through a registered mapper (the read every task shares)."""
    from glid.data.dataset_mappers import build_dataset_mapper
    from tests.utils import make_tiny_cfg

    values = _ramp16(tmp_path / "deep.png")
    mapper = build_dataset_mapper(make_tiny_cfg("INPUT.MIN_SIZE_TEST", 48), is_train=False)
    out = mapper({"file_name": str(tmp_path / "deep.png")})
    assert out["image"].shape == (3, 48, 64)
    assert abs(out["image"].float().mean().item() - values.mean() / 257.0) < 1.0


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "RGB", "1"])
def test_8_bit_modes_read_as_detectron2_reads_them(tmp_path, mode):
    from detectron2.data.detection_utils import read_image as d2_read_image

    from glid.data.image_io import read_image

    rng = np.random.default_rng(0)
    rgba = Image.fromarray(rng.integers(0, 256, (20, 30, 4), dtype=np.uint8), "RGBA")
    image = rgba.convert(mode) if mode != "P" else rgba.convert("RGB").quantize(16)
    path = str(tmp_path / f"{mode}.png")
    image.save(path)
    for fmt in ("RGB", "BGR"):
        assert (read_image(path, fmt) == d2_read_image(path, fmt)).all()


def test_exif_rotated_jpeg_is_upright(tmp_path):
    from glid.data.image_io import read_image

    image = np.zeros((20, 40, 3), np.uint8)
    image[:, :20] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(image).save(tmp_path / "rot.jpg", exif=exif, quality=95)
    out = read_image(str(tmp_path / "rot.jpg"), "RGB")
    assert out.shape == (40, 20, 3)
    assert out[:20].mean() > 200 and out[20:].mean() < 50  # the white half is on top


def test_unfaithful_or_undecodable_images_are_refused_by_name(tmp_path):
    from glid.data.image_io import BadSampleError, read_image

    Image.fromarray(np.ones((8, 8), np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(BadSampleError, match=r"float\.tif.*'F'"):
        read_image(str(tmp_path / "float.tif"))
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(tmp_path / "ok.jpg")
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(BadSampleError, match=r"cannot read image .*cut\.jpg"):
        read_image(str(tmp_path / "cut.jpg"))


def test_label_maps_keep_their_values(tmp_path):
    from glid.data.image_io import BadSampleError, read_label_map

    values = _ramp16(tmp_path / "labels16.png")
    assert (read_label_map(str(tmp_path / "labels16.png")) == values).all()
    ids = np.arange(20 * 30, dtype=np.uint8).reshape(20, 30) % 7
    palette = Image.fromarray(ids, "P")
    palette.putpalette([200, 100, 50] * 256)
    palette.save(tmp_path / "palette.png")
    assert (read_label_map(str(tmp_path / "palette.png")) == ids).all()  # indices, not colours
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(BadSampleError, match=r"rgb\.png.*'RGB'"):
        read_label_map(str(tmp_path / "rgb.png"))


# ---- bad training samples ----

NUM_CLASSES = 4


@pytest.fixture
def sem_samples(tmp_path):
    """Six good (image, label map) pairs and four bad ones: a truncated image, a label map of
    another size, one with a value outside the classes, an image whose size is not the dataset
    dict's."""
    rng = np.random.default_rng(0)
    dicts = []
    for i in range(10):
        image = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
        label = rng.integers(0, NUM_CLASSES, (32, 48), dtype=np.uint8)
        label[:2] = 255
        if i == 7:
            label = label[:30]
        if i == 8:
            label[5, 5] = 9
        Image.fromarray(image).save(tmp_path / f"{i}.jpg")
        Image.fromarray(label).save(tmp_path / f"{i}.png")
        dicts.append(
            {
                "file_name": str(tmp_path / f"{i}.jpg"),
                "sem_seg_file_name": str(tmp_path / f"{i}.png"),
            }
        )
    dicts[9].update(width=50, height=32)
    data = (tmp_path / "6.jpg").read_bytes()
    (tmp_path / "6.jpg").write_bytes(data[: len(data) // 2])
    return dicts


def _sem_mapper(is_train=True):
    from glid.data.dataset_mappers import SemanticSegmentationDatasetMapper

    return SemanticSegmentationDatasetMapper(
        is_train, augmentations=[], image_format="RGB", ignore_label=255, num_classes=NUM_CLASSES
    )


def test_bad_samples_name_the_file_and_the_problem(sem_samples):
    from detectron2.data.detection_utils import SizeMismatchError

    from glid.data.image_io import BadSampleError

    mapper = _sem_mapper()
    for d in sem_samples[:6]:
        assert mapper(d)["sem_seg"].shape == (32, 48)
    with pytest.raises(BadSampleError, match=r"cannot read image .*6\.jpg"):
        mapper(sem_samples[6])
    with pytest.raises(BadSampleError, match=r"label map .*7\.png is 30x48 .*7\.jpg is 32x48"):
        mapper(sem_samples[7])
    with pytest.raises(BadSampleError, match=r"8\.png has values \[9\] outside .*NUM_CLASSES=4"):
        mapper(sem_samples[8])
    with pytest.raises(SizeMismatchError, match=r"Mismatched image shape for image .*9\.jpg"):
        mapper(sem_samples[9])


def _loader(dicts, skip, num_workers=0):
    from detectron2.data.samplers import TrainingSampler

    from glid.engine import ResumableTrainLoader

    return ResumableTrainLoader(
        dicts, _sem_mapper(), TrainingSampler(len(dicts), seed=0), 3,
        aspect_ratio_grouping=False, seed=0, skip_bad_samples=skip, num_workers=num_workers,
    )  # fmt: skip


def test_training_stops_on_a_bad_sample_by_default(sem_samples):
    from glid.data.image_io import BadSampleError

    batches = iter(_loader(sem_samples[6:], skip=False))
    with pytest.raises(BadSampleError, match=r"\d\.(jpg|png)"):
        next(batches)


def _draw(loader, iterations=12):
    """The files of ``iterations`` batches, the loader's skip count and its metric."""
    from detectron2.utils.events import EventStorage

    seen = set()
    with EventStorage(0) as storage:
        batches = iter(loader)
        for _ in range(iterations):
            batch = next(batches)
            assert len(batch) == 3 and all("_bad_samples_skipped" not in x for x in batch)
            seen |= {x["file_name"] for x in batch}
            storage.step()
    return seen, loader.bad_samples_skipped, storage.latest()["data/bad_samples_skipped"][0]


def test_bad_samples_skipped_with_a_warning_and_a_count(sem_samples, caplog):
    with caplog.at_level("WARNING", logger="glid.engine.resume"):
        seen, count, metric = _draw(_loader(sem_samples, skip=True))
    assert seen == {d["file_name"] for d in sem_samples[:6]}
    assert count >= 4 and metric == count  # 36 draws out of 10 files, 4 bad
    skipped = [
        r.getMessage() for r in caplog.records if "skipping bad training sample" in r.message
    ]
    assert len(skipped) == count
    for name in ("6.jpg", "7.png", "8.png", "9.jpg"):
        assert any(f"/{name}" in m for m in skipped), name
    # Worker processes: the same samples skipped, counted in the main process.
    assert _draw(_loader(sem_samples, skip=True, num_workers=2)) == (seen, count, metric)


def test_evaluation_stops_on_a_bad_sample_even_with_skipping(sem_samples):
    from detectron2.data import build_detection_test_loader

    from glid.data.image_io import BadSampleError

    loader = build_detection_test_loader(sem_samples[5:7], mapper=_sem_mapper(is_train=False))
    with pytest.raises(BadSampleError, match=r"6\.jpg"):
        list(loader)


def test_class_count_smaller_than_the_labels_is_reported_as_such():
    import torch
    from detectron2.structures import ImageList, Instances

    from glid.modeling.tasks.mask_classification import targets_from_instances

    images = ImageList(torch.zeros(1, 3, 8, 8), [(8, 8)])
    inst = Instances((8, 8), gt_classes=torch.tensor([1, 5, 7]), gt_masks=torch.ones(3, 8, 8))
    with pytest.raises(ValueError, match=r"a\.png: .*\[5, 7\] outside \[0, 5\).*smaller than"):
        targets_from_instances([{"file_name": "a.png", "instances": inst}], images, num_classes=5)


# ---- divergence ----


def _tiny_sem_model():
    import torch
    from detectron2.modeling import build_model

    from tests.utils import make_tiny_cfg

    torch.manual_seed(0)
    model = build_model(make_tiny_cfg())
    model.train()
    return model


def test_non_finite_predictions_stop_training_before_the_matcher(sem_samples, monkeypatch):
    import torch
    from detectron2.utils.events import EventStorage

    from glid.modeling.matcher import HungarianMatcher

    model = _tiny_sem_model()
    batch = [_sem_mapper()(d) for d in sem_samples[:2]]
    with EventStorage(0):
        losses = model(batch)
    assert all(torch.isfinite(v) for v in losses.values())

    def matcher_must_not_run(*args):
        raise AssertionError("the matcher saw non-finite predictions")

    monkeypatch.setattr(HungarianMatcher, "forward", matcher_must_not_run)
    with torch.no_grad():
        model.head.weight[0, 0] = float("nan")  # class 0's logit of every query
    with EventStorage(17), pytest.raises(FloatingPointError) as exc:
        model(batch)
    message = str(exc.value)
    assert message.startswith("Loss became infinite or NaN at iteration=17!")
    assert "'pred_logits' of decoder layer 0" in message and "loss_ce_0" in message


# ---- checkpoints: never from non-finite weights, never half written ----


def _checkpointer(model, folder):
    from glid.checkpoint import GLIDCheckpointer

    return GLIDCheckpointer(model, str(folder), task_name="sem")


def test_no_checkpoint_from_non_finite_weights(tmp_path):
    import torch
    from torch import nn

    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    checkpointer = _checkpointer(model, tmp_path)
    checkpointer.save("model_0000009")
    with torch.no_grad():
        model[1].running_var[2] = float("inf")
    with pytest.raises(
        FloatingPointError, match=r"(?s)model_0000019.*model_0000009.*1.running_var"
    ):
        checkpointer.save("model_0000019")
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000009.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"


def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import torch
    from torch import nn

    model = nn.Linear(4, 4)
    checkpointer = _checkpointer(model, tmp_path)
    checkpointer.save("model_final")
    saved = model.weight.detach().clone()

    def killed_half_way(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed_half_way)
    with torch.no_grad():
        model.weight.fill_(1.0)
    with pytest.raises(KeyboardInterrupt):
        checkpointer.save("model_final")
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_final.pth"]
    fresh = nn.Linear(4, 4)
    _checkpointer(fresh, tmp_path).resume_or_load("", resume=True)
    assert torch.equal(fresh.weight, saved)


def test_sigkill_during_save_leaves_a_resumable_checkpoint(tmp_path):
    import subprocess
    import textwrap

    script = textwrap.dedent(f"""
        import os, signal, torch
        from torch import nn
        from glid.checkpoint import GLIDCheckpointer
        model = nn.Linear(64, 64)
        torch.nn.init.constant_(model.weight, 0.5)
        checkpointer = GLIDCheckpointer(model, {str(tmp_path)!r}, task_name="sem")
        checkpointer.save("model_0000099")
        checkpointer.save("model_final")
        def killed(obj, f, *args, **kwargs):
            f.write(b"PK\\x03\\x04 half a checkpoint")
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        torch.save = killed
        torch.nn.init.constant_(model.weight, 2.0)
        checkpointer.save("model_final")
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    from torch import nn

    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    fresh = nn.Linear(64, 64)
    checkpointer = _checkpointer(fresh, tmp_path)
    checkpointer.resume_or_load("", resume=True)
    assert (fresh.weight == 0.5).all()
    assert any(name.startswith(".model_final.pth.tmp") for name in os.listdir(tmp_path))
    checkpointer.save("model_0000199")  # the next save removes the killed one's temporary file
    assert sorted(os.listdir(tmp_path)) == [
        "last_checkpoint", "model_0000099.pth", "model_0000199.pth", "model_final.pth"
    ]  # fmt: skip


# ---- schedules that do not fit the run ----


def _schedule_warnings(caplog, *opts):
    import torch

    from glid.engine import build_lr_scheduler
    from tests.utils import make_tiny_cfg

    cfg = make_tiny_cfg(*opts)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.SOLVER.BASE_LR)
    caplog.clear()
    with caplog.at_level("WARNING", logger="glid.engine.lr_scheduler"):
        scheduler = build_lr_scheduler(cfg, optimizer)
    lrs = []
    for _ in range(cfg.SOLVER.MAX_ITER):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return [r.getMessage() for r in caplog.records if r.name == "glid.engine.lr_scheduler"], lrs


def test_schedules_that_fit_the_run_are_not_warned_about(caplog):
    for name in ("WarmupPolyLR", "WarmupCosineLR", "WarmupMultiStepLR"):
        messages, lrs = _schedule_warnings(
            caplog, "SOLVER.LR_SCHEDULER_NAME", name, "SOLVER.MAX_ITER", 200,
            "SOLVER.WARMUP_ITERS", 20, "SOLVER.STEPS", (150, 400),
        )  # fmt: skip
        assert messages == [] and lrs[-1] > 0, name


def test_warm_up_longer_than_the_run_is_warned_about_with_the_numbers(caplog):
    messages, lrs = _schedule_warnings(
        caplog, "SOLVER.MAX_ITER", 50, "SOLVER.WARMUP_ITERS", 200, "SOLVER.WARMUP_FACTOR", 0.001
    )
    (message,) = messages
    assert "SOLVER.WARMUP_ITERS=200 is longer than the run (SOLVER.MAX_ITER=50)" in message
    peak = float(message.split("at ")[-1].split(" x")[0])
    assert peak == pytest.approx(lrs[-1] / 0.001, rel=1e-2) and peak < 0.3


def test_learning_rate_ending_before_the_run_is_warned_about(caplog):
    messages, lrs = _schedule_warnings(
        caplog, "SOLVER.LR_SCHEDULER_NAME", "WarmupMultiStepLR", "SOLVER.MAX_ITER", 100,
        "SOLVER.WARMUP_ITERS", 0, "SOLVER.STEPS", (60,), "SOLVER.GAMMA", 0.0,
    )  # fmt: skip
    (message,) = messages
    assert "is 0 from iteration 60 on: the last 40 of SOLVER.MAX_ITER=100" in message
    assert lrs[59] > 0 and lrs[60] == 0


def test_unreadable_checkpoints_are_called_what_they_are(tmp_path):
    import torch
    from torch import nn

    from glid.checkpoint import CheckpointMismatchError

    model = nn.Linear(3, 3)
    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "noise.pth").write_bytes(np.random.default_rng(0).bytes(3000))
    torch.save({"model": model.state_dict(), "args": _FakeVis(None)}, tmp_path / "foreign.pth")
    checkpointer = _checkpointer(model, tmp_path)
    with pytest.raises(CheckpointMismatchError, match=r"empty\.pth is corrupt or truncated \(0 "):
        checkpointer.load(str(tmp_path / "empty.pth"))
    with pytest.raises(CheckpointMismatchError, match=r"noise\.pth is corrupt") as exc:
        checkpointer.load(str(tmp_path / "noise.pth"))
    assert "weights_only" not in str(exc.value)
    with pytest.raises(CheckpointMismatchError, match=r"foreign\.pth holds .*_FakeVis") as exc:
        checkpointer.load(str(tmp_path / "foreign.pth"))
    assert "corrupt" not in str(exc.value) and "weights_only" not in str(exc.value)


def test_predictor_refuses_images_that_are_not_8_bit(tmp_path):
    """A 16-bit array (e.g. cv2.IMREAD_UNCHANGED) would be normalized as if 8-bit; the
    predictor refuses it and names the reader that converts it."""
    from detectron2.modeling import build_model

    from glid.engine import GLIDPredictor
    from tests.utils import make_tiny_cfg

    cfg = make_tiny_cfg("INPUT.MIN_SIZE_TEST", 32, "DATASETS.TEST", "()")
    _checkpointer(build_model(cfg), tmp_path).save("model_final")
    cfg.MODEL.WEIGHTS = str(tmp_path / "model_final.pth")
    predictor = GLIDPredictor(cfg)
    assert "sem_seg" in predictor(np.zeros((32, 48, 3), np.uint8))
    with pytest.raises(ValueError, match=r"uint8 image, got uint16 .*read_image"):
        predictor(np.zeros((32, 48, 3), np.uint16))
    with pytest.raises(ValueError, match=r"shape \(32, 48\)"):
        predictor(np.zeros((32, 48), np.uint8))
