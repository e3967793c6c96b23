"""Builds an emulated-kernel extension (tests/cuda_emulation/<name>_emulated.cpp) with torch's JIT
loader, cached in build/cuda_emulation[_asan]. Used by tests/test_cuda_emulation.py and, in a
process of its own, by asan_check.py."""

from __future__ import annotations

import os
from types import ModuleType

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def load_emulated(name: str, sanitize: bool = False) -> ModuleType:
    """Compiles and imports ``<name>_emulated.cpp``; ``sanitize`` adds AddressSanitizer (the
    process must then run with libasan preloaded)."""
    from torch.utils.cpp_extension import load

    flags = ["-O1", "-fno-strict-aliasing"]
    ldflags = []
    if sanitize:
        flags += ["-fsanitize=address", "-fno-omit-frame-pointer"]
        ldflags += ["-fsanitize=address"]
    build_dir = os.path.join(REPO, "build", "cuda_emulation_asan" if sanitize else "cuda_emulation")
    os.makedirs(build_dir, exist_ok=True)
    return load(
        f"glid_{name}_emulated" + ("_asan" if sanitize else ""),
        [os.path.join(HERE, f"{name}_emulated.cpp")],
        extra_include_paths=[os.path.join(REPO, "csrc"), HERE],
        extra_cflags=flags,
        extra_ldflags=ldflags,
        build_directory=build_dir,
    )
