"""Install detectron2's pure-Python package from the ``sal-detectron2`` wheel.

detectron2 is not published on PyPI under its own name. ``sal-detectron2==0.7.2`` is a build of
upstream detectron2 tagged for CPython 3.10 only; its Python sources work on newer Pythons. This
script downloads that wheel (no dependencies), and copies its ``detectron2/`` package into this
interpreter's site-packages, leaving out the compiled ``_C`` object (built for another Python)
and the wheel's top-level ``tools/``. GLID needs none of detectron2's compiled ops; without
``_C`` detectron2 uses pycocotools for COCO evaluation.

Idempotent: does nothing when ``import detectron2`` already works (use ``--force`` to redo).
Machines that reach GitHub can instead use the official route (see README).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from pathlib import Path

WHEEL_SPEC = "sal-detectron2==0.7.2"


def _download_wheel(dest: Path) -> Path:
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--python-version", "3.10", "-d", str(dest), WHEEL_SPEC,
    ]  # fmt: skip
    subprocess.run(cmd, check=True)
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(
            f"expected one wheel in {dest} after downloading {WHEEL_SPEC}, got {wheels}"
        )
    return wheels[0]


def install(force: bool = False) -> Path:
    """Install detectron2 into purelib; returns the package directory."""
    target = Path(sysconfig.get_paths()["purelib"]) / "detectron2"
    if target.exists() and not force:
        print(f"detectron2 already at {target}")
        return target
    with tempfile.TemporaryDirectory() as tmp:
        wheel = _download_wheel(Path(tmp))
        with zipfile.ZipFile(wheel) as zf:
            names = [n for n in zf.namelist() if n.startswith("detectron2/")]
            if not names:
                raise RuntimeError(f"{wheel.name} holds no detectron2/ package")
            if target.exists():
                shutil.rmtree(target)
            for name in names:
                leaf = name.rsplit("/", 1)[-1]
                if name.endswith("/") or (leaf.startswith("_C") and leaf.endswith(".so")):
                    continue
                zf.extract(name, target.parent)
    print(f"installed detectron2 from {wheel.name} into {target}")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="reinstall even if present")
    args = parser.parse_args()
    install(force=args.force)
    subprocess.run(
        [sys.executable, "-c", "import detectron2; print('detectron2', detectron2.__version__)"],
        check=True,
    )


if __name__ == "__main__":
    main()
