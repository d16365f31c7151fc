"""Loading of the native extension ``eqkern._C``, what was built, and whether triton imports.

Importing this module tries to load ``eqkern._C`` once (which registers the ``eqkern::*`` C++/CUDA
kernels with the dispatcher). A failure is kept, not raised: the pure-torch backends work without
it, and :func:`cpp_load_error` says why it is missing (``eqkern info``, :mod:`eqkern.tools.info`,
reports it with the backends' own availability probes). ``EQKERN_FORCE_SKIP_LOADING_SO=1``
skips loading on purpose (for example to rule out a broken build).

The libtorch C++ ABI is not stable across torch releases, so ``eqkern._C`` only works with the
torch it was compiled against. Before importing it, the torch version recorded in
``eqkern/_build_info.json`` is compared with the installed one (:func:`torch_mismatch`): on a
mismatch ``_C`` is not loaded (a stale ``.so`` fails with an undefined symbol at best, and can
crash at worst), so the compiled backends report themselves unavailable with a reason that names
both versions and the fix.
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
_MISMATCH = "eqkern._C was built against torch"  # how torch_mismatch()'s reasons begin
_OP = "eqkern::settle_epilogue_"  # an op every build registers, used to probe the dispatcher


def public_version(version: str) -> str:
    """``version`` without its local label: ``"2.14.1+cu130"`` -> ``"2.14.1"``."""
    return str(version).split("+", 1)[0]


def torch_mismatch(info: dict | None = None, installed: str | None = None) -> str | None:
    """Why the built ``eqkern._C`` cannot be used with the installed torch, or None if it can.

    ``info``: the build info (default :func:`build_info`); ``installed``: a torch version (default
    ``torch.__version__``). Only the public version is compared (``2.14.1``): a different local
    label (``+cpu`` / ``+cu130``) keeps the same C++ ABI, and what else it changes (a missing
    ``libc10_cuda.so``) fails the import with its own message, to which :func:`cpp_load_error`
    adds the versions. Nothing to compare (no build info, no native build, no recorded torch) is
    not a mismatch.
    """
    info = build_info() if info is None else info
    built = info.get("torch") if info.get("cpp_compiled") else None
    installed = str(torch.__version__ if installed is None else installed)
    if not built or public_version(built) == public_version(installed):
        return None
    return (f"{_MISMATCH} {built} but torch {installed} is installed (a compiled extension only "
            f"works with the torch it was built against), so it was not loaded and the compiled "
            f"backend cpp is unavailable; fix: rebuild eqkern against this torch, "
            f"`pip install --no-build-isolation -e .` in its source tree (`pip install "
            f"--no-build-isolation .` for a non-editable install), or install "
            f"torch=={public_version(built)}")


def _load_extension() -> str | None:
    """Import eqkern._C; return None on success, else why it failed (or why it was not tried)."""
    if os.environ.get("EQKERN_FORCE_SKIP_LOADING_SO") == "1":
        return "not loaded because EQKERN_FORCE_SKIP_LOADING_SO=1"
    mismatch = torch_mismatch()
    if mismatch is not None:  # checked before the import: a stale .so may not fail cleanly
        return mismatch
    try:
        importlib.import_module("eqkern._C")  # torch is imported first: _C links against libtorch
    except (ImportError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None




def cpp_available() -> bool:
    """Whether eqkern._C loaded (so the CPU kernels are registered)."""
    return _LOAD_ERROR is None


def cpp_load_error() -> str | None:
    """Why eqkern._C is not available (with a hint), or None when it loaded."""
    if _LOAD_ERROR is None:
        return None
    if _LOAD_ERROR.startswith(_MISMATCH):  # already names both versions and the fix
        return _LOAD_ERROR
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


# After build_info, which the version check reads.
_LOAD_ERROR: str | None = _load_extension()


@functools.cache
def triton_status() -> tuple[str | None, str | None]:
    """(triton version, None) if `import triton` works, else (None, why not). Imports once."""
    try:
        import triton
    except Exception as exc:  # noqa: BLE001 - a broken triton install raises more than ImportError
        return None, f"`import triton` failed: {type(exc).__name__}: {exc}"
    return triton.__version__, None


_triton = triton_status  # the former private name (tests/kernels use it)
