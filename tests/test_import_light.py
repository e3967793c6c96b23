"""What importing GLID loads.

* ``import glid.layers`` (the ops, also ``glid._C``) loads torch and nothing else: not detectron2,
  fvcore, timm, OpenCV or panopticapi, so the op tests and benchmarks run on a machine that has
  torch alone. ``import glid`` alone is as light; the first use of ``glid.add_glid_config``
  registers every component and dataset with detectron2.
* That registration must not import the generated-data writer or its drawing dependencies.

detectron2 itself imports OpenCV on ``import detectron2`` (``detectron2/utils/env.py``), so
``cv2`` being in ``sys.modules`` says nothing about GLID. The subprocess therefore records, for
every import of ``cv2`` or ``panopticapi``, which module's code asked for it (both import
statements, through ``builtins.__import__``, and first loads, through a ``sys.meta_path``
finder), and the test asserts that no ``glid`` module did, that ``panopticapi`` was never
loaded, and that the writer package ``glid.data.synthetic`` was never loaded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.utils import REPO_ROOT

WRITER = "glid.data.synthetic"

_SCRIPT = r"""
import builtins, json, sys

WATCHED = ("cv2", "panopticapi")
importers = []  # [module asked for, module whose code asked]


def _watched(name):
    return name.split(".")[0] in WATCHED


def _caller():
    frame = sys._getframe(2)
    while frame is not None and (
        frame.f_globals.get("__name__", "").startswith("importlib")
        or frame.f_code is _recording_import.__code__
    ):
        frame = frame.f_back
    return None if frame is None else frame.f_globals.get("__name__")


class _RecordFirstLoads:
    def find_spec(self, name, path=None, target=None):
        if _watched(name):
            importers.append([name, _caller()])
        return None


_real_import = builtins.__import__


def _recording_import(name, globals=None, locals=None, fromlist=(), level=0):
    if level == 0 and _watched(name):
        importers.append([name, (globals or {}).get("__name__")])
    return _real_import(name, globals, locals, fromlist, level)


sys.meta_path.insert(0, _RecordFirstLoads())
builtins.__import__ = _recording_import
import glid  # noqa: E402

glid.add_glid_config  # noqa: B018  (the first use registers everything)

builtins.__import__ = _real_import
modules = sorted(
    m for m in sys.modules if m.split(".")[0] in WATCHED or m.startswith("glid.data.synthetic")
)
print(json.dumps({"modules": modules, "importers": importers}))
"""


def _import_glid_in_subprocess() -> dict:
    pytest.importorskip("detectron2")
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_glid_registration_does_not_import_the_writer_or_drawing_code() -> None:
    result = _import_glid_in_subprocess()
    modules, importers = result["modules"], result["importers"]
    writer = [m for m in modules if m == WRITER or m.startswith(WRITER + ".")]
    assert not writer, f"registering glid imported the data writer: {writer}"
    panopticapi = [m for m in modules if m.split(".")[0] == "panopticapi"]
    assert not panopticapi, f"registering glid imported {panopticapi} (importers: {importers})"
    by_glid = sorted({(m, by) for m, by in importers if (by or "").split(".")[0] == "glid"})
    assert not by_glid, f"glid modules import drawing code when registering: {by_glid}"
    if "cv2" in modules:  # loaded by detectron2: the hooks must have seen who asked for it
        assert any(m == "cv2" for m, _ in importers), importers


# ---- import glid.layers: torch alone ------------------------------------------------------------

# Not importable there: the subprocess raises ImportError for these, as on a machine without them.
OP_FORBIDDEN = ("detectron2", "fvcore", "iopath", "timm", "cv2", "panopticapi", "pycocotools")

_LAYERS_SCRIPT = r"""
import importlib.abc, json, re, sys
from importlib import metadata

FORBIDDEN = tuple(sys.argv[1].split(","))


class _Unavailable(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in FORBIDDEN:
            raise ImportError(f"{name} is not installed (blocked by the test)")
        return None


def _canon(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def torch_closure():
    # torch's distribution and everything it requires, transitively (extras left out).
    seen, todo = set(), ["torch"]
    while todo:
        name = _canon(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            reqs = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        todo += [re.split(r"[ ;<>=!~\[(]", r, maxsplit=1)[0] for r in reqs if "extra ==" not in r]
    return seen


import torch  # noqa: E402

before = set(sys.modules)
sys.meta_path.insert(0, _Unavailable())
import glid.layers as L  # noqa: E402

x = [torch.randn(2, 3, 4, 4) for _ in range(3)]
L.fast_normalized_fusion(x, torch.ones(3))
value = torch.randn(1, 5, 2, 4)
ss, lsi = torch.tensor([[2, 2], [1, 1]]), torch.tensor([0, 4])
loc, attn = torch.rand(1, 3, 2, 2, 2, 2), torch.rand(1, 3, 2, 2, 2)
L.ms_deform_attn(value, ss, lsi, loc, attn)
import glid  # noqa: E402

glid.__version__, glid.layers  # neither registers anything

new = {m.split(".")[0] for m in set(sys.modules) - before} - set(sys.stdlib_module_names)
owners = metadata.packages_distributions()
closure = torch_closure()
allowed = closure | {"glid", "numpy"}  # torch imports numpy when installed (not in its metadata)
other = sorted(m for m in new if any(_canon(d) not in allowed for d in owners.get(m, ())))
print(json.dumps({"new": sorted(new), "not_torch": other}))
"""


def test_import_glid_layers_needs_torch_alone() -> None:
    # The ops run in both modes: the reference here makes the test independent of the _C build.
    proc = subprocess.run(
        [sys.executable, "-c", _LAYERS_SCRIPT, ",".join(OP_FORBIDDEN)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "GLID_REFERENCE_OPS": "1"},
    )
    assert proc.returncode == 0, (
        "`import glid.layers` and its ops must work without "
        f"{', '.join(OP_FORBIDDEN)}:\n{proc.stderr[-4000:]}"
    )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "glid" in result["new"], result
    assert not result["not_torch"], (
        f"`import glid.layers` loaded packages that are neither torch nor its requirements: "
        f"{result['not_torch']}"
    )


_ENTRY_SCRIPT = r"""
import json, sys

import glid

bare = sorted({m.split(".")[0] for m in sys.modules} & {"detectron2", "fvcore", "timm"})
from glid import add_glid_config  # noqa: E402,F401  (the first use registers everything)
from detectron2.data import DatasetCatalog  # noqa: E402
from detectron2.modeling import BACKBONE_REGISTRY, META_ARCH_REGISTRY  # noqa: E402

loaded = sorted(m for m in ("glid.data", "glid.modeling") if m in sys.modules)
from glid.modeling import PIXEL_DECODER_REGISTRY, TASK_REGISTRY  # noqa: E402

print(json.dumps({
    "bare": bare,
    "loaded": loaded,
    "meta_arch": "GLID" in META_ARCH_REGISTRY,
    "backbones": sorted(k for k, _ in BACKBONE_REGISTRY),
    "pixel_decoders": sorted(k for k, _ in PIXEL_DECODER_REGISTRY),
    "tasks": len(list(TASK_REGISTRY)),
    "datasets": [n for n in DatasetCatalog.list() if n.startswith(("glid_synth", "nyuv2"))],
}))
"""


def test_glid_entry_registers_on_first_use() -> None:
    pytest.importorskip("detectron2")
    proc = subprocess.run(
        [sys.executable, "-c", _ENTRY_SCRIPT],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["bare"] == [], f"bare `import glid` loaded {result['bare']}"
    assert result["loaded"] == ["glid.data", "glid.modeling"], result
    assert result["meta_arch"], result
    assert "build_glid_swin_backbone" in result["backbones"], result
    assert result["pixel_decoders"] == ["BiFPNPixelDecoder", "MSDeformAttnPixelDecoder"], result
    assert result["tasks"] >= 8, result
    assert "glid_synth_sem_seg_train" in result["datasets"], result
    assert "nyuv2_depth_train" in result["datasets"], result
