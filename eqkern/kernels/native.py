"""Loading of the native extension ``eqkern._C``, what was built, and whether triton imports.

Importing this module tries to load ``eqkern._C`` once (which registers the ``eqkern::*`` C++/CUDA
kernels with the dispatcher). A failure is kept, not raised: the pure-torch backends work without
it, and :func:`cpp_load_error` says why it is missing (``eqkern info``, :mod:`eqkern.tools.info`,
reports it with the backends' own availability probes). ``EQKERN_FORCE_SKIP_LOADING_SO=1``
skips loading on purpose (for example to rule out a broken build).
"""

from __future__ import annotations

import functools
import importlib
import json
import os
from pathlib import Path

import torch

_BUILD_INFO_PATH = Path(__file__).parent.parent / "_build_info.json"  # written next to eqkern/_C by setup.py
_REINSTALL = "reinstall with `pip install --no-build-isolation -e .`"
_OP = "eqkern::settle_epilogue_"  # an op every build registers, used to probe the dispatcher


def _load_extension() -> str | None:
    """Import eqkern._C; return None on success, else why it failed."""
    if os.environ.get("EQKERN_FORCE_SKIP_LOADING_SO") == "1":
        return "not loaded because EQKERN_FORCE_SKIP_LOADING_SO=1"
    try:
        importlib.import_module("eqkern._C")  # torch is imported first: _C links against libtorch
    except (ImportError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


_LOAD_ERROR: str | None = _load_extension()


def cpp_available() -> bool:
    """Whether eqkern._C loaded (so the CPU kernels are registered)."""
    return _LOAD_ERROR is None


def cpp_load_error() -> str | None:
    """Why eqkern._C is not available (with a hint), or None when it loaded."""
    if _LOAD_ERROR is None:
        return None
    hint = _REINSTALL
    built = build_info()
    if built.get("cpp_compiled") is False:
        hint = f"{built.get('reason')}; {hint} and EQKERN_CPP unset"
    elif built.get("torch") and built["torch"] != torch.__version__:
        hint = f"it was built for torch {built['torch']} but torch {torch.__version__} is installed; {hint}"
    return f"{_LOAD_ERROR} ({hint})"


def cuda_kernels_registered() -> bool:
    """Whether eqkern._C registered CUDA kernels (it was built with EQKERN_CUDA on). Needs no GPU."""
    return cpp_available() and torch._C._dispatch_has_kernel_for_dispatch_key(_OP, "CUDA")


def build_info() -> dict:
    """The build's eqkern/_build_info.json, or {} when the package was never built (source tree)."""
    try:
        return json.loads(_BUILD_INFO_PATH.read_text())
    except (OSError, ValueError):
        return {}


@functools.cache
def triton_status() -> tuple[str | None, str | None]:
    """(triton version, None) if `import triton` works, else (None, why not). Imports once."""
    try:
        import triton
    except Exception as exc:  # noqa: BLE001 - a broken triton install raises more than ImportError
        return None, f"`import triton` failed: {type(exc).__name__}: {exc}"
    return triton.__version__, None


_triton = triton_status  # the former private name (tests/kernels use it)
