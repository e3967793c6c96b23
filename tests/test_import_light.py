"""``import glid`` must not import the generated-data writer or its drawing dependencies.

detectron2 itself imports OpenCV on ``import detectron2`` (``detectron2/utils/env.py``), so
``cv2`` being in ``sys.modules`` says nothing about GLID. The subprocess therefore records, for
every import of ``cv2`` or ``panopticapi``, which module's code asked for it (both import
statements, through ``builtins.__import__``, and first loads, through a ``sys.meta_path``
finder), and the test asserts that no ``glid`` module did, that ``panopticapi`` was never
loaded, and that the writer package ``glid.data.synthetic`` was never loaded.
"""

from __future__ import annotations

import json
import subprocess
import sys

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
import glid  # noqa: E402,F401

builtins.__import__ = _real_import
modules = sorted(
    m for m in sys.modules if m.split(".")[0] in WATCHED or m.startswith("glid.data.synthetic")
)
print(json.dumps({"modules": modules, "importers": importers}))
"""


def _import_glid_in_subprocess() -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_glid_does_not_import_the_writer_or_drawing_code() -> None:
    result = _import_glid_in_subprocess()
    modules, importers = result["modules"], result["importers"]
    writer = [m for m in modules if m == WRITER or m.startswith(WRITER + ".")]
    assert not writer, f"`import glid` imported the data writer: {writer}"
    panopticapi = [m for m in modules if m.split(".")[0] == "panopticapi"]
    assert not panopticapi, f"`import glid` imported {panopticapi} (importers: {importers})"
    by_glid = sorted({(m, by) for m, by in importers if (by or "").split(".")[0] == "glid"})
    assert not by_glid, f"glid modules import drawing code on `import glid`: {by_glid}"
    if "cv2" in modules:  # loaded by detectron2: the hooks must have seen who asked for it
        assert any(m == "cv2" for m, _ in importers), importers
