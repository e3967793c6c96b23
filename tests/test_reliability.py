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

    def __init__(self, cfg, score_threshold=0.0):
        pass

    def run_on_image(self, image_bgr):
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
