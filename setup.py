"""Build of eqkern's native extension ``eqkern._C`` (the static metadata lives in pyproject.toml).

Install with ``pip install --no-build-isolation [-e] .``: the extension is compiled against the torch
already installed, which build isolation would replace by another one (docs/conventions.md). The
libtorch C++ ABI changes between torch releases, so a build with native code requires the torch
release it was built with (``torch==X.Y.Z``, which its local builds such as ``+cu130`` satisfy); a
pure-Python build (``EQKERN_CPP=0``) keeps the loose ``torch>=2.6``. Environment:

* ``EQKERN_CPP=1|0``: ``0`` installs pure Python (no ``eqkern._C``; the torch backends still work).
* ``EQKERN_CUDA=auto|0|1``: CUDA kernels when torch is a CUDA build and the toolkit is found
  (``auto``), never (``0``), or fail if that is impossible (``1``). A visible GPU is not needed.
* ``TORCH_CUDA_ARCH_LIST``: the GPUs to compile for. Unset with a visible GPU, torch detects it;
  unset without one (a wheel or CI build), :data:`DEFAULT_CUDA_ARCH_LIST` =
  ``8.0;8.6;8.9;9.0+PTX``: cubins for A100 (8.0), RTX 30xx / A10 / A40 (8.6), RTX 40xx / L4 / L40
  (8.9) and H100 / H200 (9.0), plus compute_90 PTX that the driver JIT-compiles on newer GPUs
  (sm_80 cubins also run on the other 8.x GPUs; PTX only runs on its own arch or newer). The three
  extra cubins cost about half a minute of a 2-core build, so ``make install`` keeps this default;
  ``TORCH_CUDA_ARCH_LIST=9.0+PTX`` (or ``9.0``) builds faster.
* ``CUDA_HOME``, ``MAX_JOBS``, ``DEBUG=1`` (``-O0 -g``).
"""

from __future__ import annotations

import datetime
import glob
import json
import os
import platform
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).parent.resolve()
# Cross-compile targets when TORCH_CUDA_ARCH_LIST is unset and no GPU is visible: the common data
# centre and desktop GPUs, and PTX of the newest so that later GPUs can still JIT it.
DEFAULT_CUDA_ARCH_LIST = "8.0;8.6;8.9;9.0+PTX"
# Runtime dependencies besides torch, whose requirement depends on the build (see _torch_requirement).
BASE_REQUIREMENTS = ["numpy", "tqdm", "matplotlib", "filelock"]
LOOSE_TORCH = "torch>=2.6"
EQKERN_CPP = os.environ.get("EQKERN_CPP", "1")
EQKERN_CUDA = os.environ.get("EQKERN_CUDA", "auto")
DEBUG = os.environ.get("DEBUG", "0") == "1"
if EQKERN_CPP not in ("0", "1") or EQKERN_CUDA not in ("auto", "0", "1"):
    sys.exit(f"eqkern: EQKERN_CPP must be 0|1 and EQKERN_CUDA auto|0|1, got {EQKERN_CPP!r}, {EQKERN_CUDA!r}")

# torch guesses CUDA_HOME from `which nvcc`, which is a wrapper script in /usr/local/bin on our
# images (-> the wrong CUDA_HOME=/usr/local). Decide before torch.utils.cpp_extension reads it.
if (EQKERN_CPP == "1" and not os.environ.get("CUDA_HOME")
        and not os.environ.get("CUDA_PATH") and Path("/usr/local/cuda/include/cuda_runtime.h").exists()):
    os.environ["CUDA_HOME"] = "/usr/local/cuda"

build_info: dict = {"cpp_compiled": False, "cuda_compiled": False, "debug": DEBUG,
                    "python": platform.python_version(), "built_at": None}
ext_modules: list = []
cmdclass: dict = {}

if EQKERN_CPP == "0":
    build_info["reason"] = "EQKERN_CPP=0: no native code was built"
else:
    try:
        import torch
    except ImportError:
        sys.exit("eqkern builds against your installed torch: install torch first, then run "
                 "`pip install --no-build-isolation .` (or set EQKERN_CPP=0 for a pure-Python install)")
    from torch.utils import cpp_extension  # after the CUDA_HOME fix-up: it reads CUDA_HOME at import

    cuda_home = cpp_extension.CUDA_HOME
    if torch.version.cuda is None:
        cuda_reason = f"torch {torch.__version__} is not a CUDA build"
    elif cuda_home is None:
        cuda_reason = "no CUDA toolkit found (set CUDA_HOME)"
    elif not (Path(cuda_home) / "include" / "cuda_runtime.h").exists():
        cuda_reason = f"CUDA_HOME={cuda_home} has no include/cuda_runtime.h"
    else:
        cuda_reason = None
    if EQKERN_CUDA == "1" and cuda_reason is not None:
        sys.exit(f"eqkern: EQKERN_CUDA=1 but CUDA kernels cannot be built: {cuda_reason}")
    use_cuda = EQKERN_CUDA != "0" and cuda_reason is None
    if EQKERN_CUDA == "0":
        cuda_reason = "EQKERN_CUDA=0"

    # torch's arch detection needs a visible GPU (IndexError without one, torch 2.14): cross-compile
    # for the common GPUs. device_count() only asks the driver; it is not the build decision.
    if use_cuda and not os.environ.get("TORCH_CUDA_ARCH_LIST") and torch.cuda.device_count() == 0:
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCH_LIST
        print(f"eqkern: no GPU visible, cross-compiling CUDA kernels for TORCH_CUDA_ARCH_LIST="
              f"{DEFAULT_CUDA_ARCH_LIST} (A100, RTX 30xx, RTX 40xx/L4/L40, H100/H200, + PTX); set "
              f"TORCH_CUDA_ARCH_LIST to target other GPUs or to build faster")

    rel = lambda pattern: sorted(os.path.relpath(p, ROOT) for p in glob.glob(str(ROOT / pattern)))  # noqa: E731
    sources = rel("csrc/*.cpp") + rel("csrc/loop/*.cpp") + rel("csrc/cpu/*.cpp")
    if use_cuda:  # compile_check.cu is the nvcc-only CI gate, not part of the extension
        sources += [s for s in rel("csrc/cuda/*.cu") if not s.endswith("compile_check.cu")]
    opt = ["-O0", "-g"] if DEBUG else ["-O3"]
    # at::parallel_for is a header template: without -fopenmp it compiles to a serial loop, and the
    # CPU kernels never use a second core. The libgomp.so.1 it links is the one torch loads first.
    openmp = ["-fopenmp"] if torch.backends.openmp.is_available() and sys.platform != "darwin" else []
    Extension = cpp_extension.CUDAExtension if use_cuda else cpp_extension.CppExtension
    ext_modules.append(Extension(
        "eqkern._C",
        sources,
        include_dirs=[str(ROOT / "csrc")],
        py_limited_api=True,  # no pybind11 in _C: one abi3 wheel for CPython >= 3.10
        extra_compile_args={
            "cxx": opt + openmp + ["-DPy_LIMITED_API=0x030A0000"],
            "nvcc": (["-O0", "-g", "-G"] if DEBUG else ["-O3", "-lineinfo"]) + ["--expt-relaxed-constexpr"],
        },
        extra_link_args=openmp,
    ))
    build_info.update(
        cpp_compiled=True, cuda_compiled=use_cuda, torch=torch.__version__, torch_cuda=torch.version.cuda,
        cuda_home=cuda_home if use_cuda else None,
        cuda_arch_list=(os.environ.get("TORCH_CUDA_ARCH_LIST") or "detected from the visible GPUs")
        if use_cuda else None,
        reason=None if use_cuda else f"CUDA kernels not built: {cuda_reason}",
    )
    print(f"eqkern: torch {torch.__version__} (CUDA {torch.version.cuda}), CUDA_HOME={cuda_home}, "
          + ("building CPU + CUDA kernels, arch list " + build_info["cuda_arch_list"] if use_cuda
             else f"building CPU kernels only ({cuda_reason})"))


def _torch_requirement() -> str:
    """``torch==X.Y.Z``, the release of the torch that ran this build, when native code is built
    (its C++ ABI is per release), else the loose floor. The local label (``+cu130``) is dropped: a
    pin on it would refuse the same release from an index whose wheels carry another or none."""
    if not ext_modules:
        return LOOSE_TORCH
    return f"torch=={build_info['torch'].split('+', 1)[0]}"


def write_build_info(build_lib: str, inplace: bool) -> None:
    """Write eqkern/_build_info.json into build_lib (wheels), and into the source tree for in-place
    (editable) builds, where it must describe the eqkern/_C*.so that sits next to it."""
    text = json.dumps({**build_info, "built_at": datetime.datetime.now().isoformat(timespec="seconds")},
                      indent=2, sort_keys=True) + "\n"
    for pkg in {Path(build_lib).resolve() / "eqkern"} | ({ROOT / "eqkern"} if inplace else set()):
        pkg.mkdir(parents=True, exist_ok=True)
        (pkg / "_build_info.json").write_text(text)


class BuildPyWithInfo(build_py):
    """Without an extension build_ext never runs, so the pure-Python build writes the info here."""

    def run(self) -> None:
        super().run()  # first: it copies package data, including any stale _build_info.json
        if not ext_modules:
            editable = getattr(self, "editable_mode", False)
            if editable:  # an old in-place _C would still be imported: EQKERN_CPP=0 means none
                for so in (ROOT / "eqkern").glob("_C.*"):
                    print(f"eqkern: EQKERN_CPP=0, removing the stale in-place build {so}")
                    so.unlink()
            write_build_info(self.build_lib, inplace=editable)


cmdclass["build_py"] = BuildPyWithInfo
if ext_modules:
    class BuildExtWithInfo(cpp_extension.BuildExtension):
        """Writes the build info only after the extension compiled and linked."""

        def run(self) -> None:
            super().run()
            write_build_info(self.build_lib, inplace=self.inplace or getattr(self, "editable_mode", False))

    cmdclass["build_ext"] = BuildExtWithInfo

setup(
    install_requires=[_torch_requirement(), *BASE_REQUIREMENTS],  # pyproject.toml: dynamic
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    options={"bdist_wheel": {"py_limited_api": "cp310"}} if ext_modules else {},
)
