"""Build and install GLID, including its one compiled extension ``glid._C``.

CPU kernels always build. CUDA kernels build when ``CUDA_HOME`` is found and either a GPU is
visible or ``FORCE_CUDA=1``; ``TORCH_CUDA_ARCH_LIST`` picks the architectures (torch's rules).
"""

from __future__ import annotations

import glob
import os

from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def _want_cuda() -> bool:
    import torch

    if os.environ.get("FORCE_CUDA", "0") == "1":
        if CUDA_HOME is None:
            raise RuntimeError("FORCE_CUDA=1 but no CUDA toolkit found: set CUDA_HOME")
        return True
    return CUDA_HOME is not None and torch.cuda.is_available()


def get_extensions() -> list:
    csrc = os.path.join(ROOT, "csrc")
    sources = glob.glob(os.path.join(csrc, "*.cpp")) + glob.glob(os.path.join(csrc, "*", "*.cpp"))
    cuda_sources = glob.glob(os.path.join(csrc, "*", "*.cu"))
    # Headers (csrc/<op>/*.h, *.cuh and the shared csrc/common/*.h, found through
    # include_dirs=[csrc]).
    # With ninja (torch's default) the compiler's dependency files already recompile the sources
    # that include a changed header; `depends` makes the distutils fallback (no ninja) rebuild
    # too, instead of skipping the extension as up to date.
    headers = sorted(
        glob.glob(os.path.join(csrc, "**", "*.h"), recursive=True)
        + glob.glob(os.path.join(csrc, "**", "*.cuh"), recursive=True)
    )
    extra_compile_args = {"cxx": ["-O3"]}  # torch picks the C++ standard (C++20 for torch 2.14)
    define_macros = []
    extension = CppExtension
    if _want_cuda():
        extension = CUDAExtension
        sources += cuda_sources
        define_macros.append(("WITH_CUDA", None))
        extra_compile_args["nvcc"] = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
    sources = [os.path.relpath(s, ROOT) for s in sorted(sources)]
    return [
        extension(
            "glid._C",
            sources,
            include_dirs=[csrc],
            depends=[os.path.relpath(h, ROOT) for h in headers],
            define_macros=define_macros,
            extra_compile_args=extra_compile_args,
        )
    ]


setup(
    name="glid",
    version="0.1.0",
    description="GLID: a generalist encoder-decoder vision model on detectron2",
    packages=find_packages(exclude=("tests", "tools", "configs", "demo", "datasets")),
    python_requires=">=3.10",
    ext_modules=get_extensions(),
    cmdclass={"build_ext": BuildExtension},
)
