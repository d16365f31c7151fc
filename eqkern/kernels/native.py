"""Loading of the native extension ``eqkern._C`` and a report of what was built and what can run.

Importing this module tries to load ``eqkern._C`` once (which registers the ``eqkern::*`` C++/CUDA
kernels with the dispatcher). A failure is kept, not raised: the pure-torch backends work without
it, and :func:`cpp_load_error` / :func:`info` say why it is missing. ``EQKERN_FORCE_SKIP_LOADING_SO=1``
skips loading on purpose (for example to rule out a broken build).
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import json
import os
import platform
import sys
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


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.cache
def _triton() -> tuple[str | None, str | None]:
    """(triton version, None) if `import triton` works, else (None, why not). Imports once."""
    try:
        import triton
    except Exception as exc:  # noqa: BLE001 - a broken triton install raises more than ImportError
        return None, f"`import triton` failed: {type(exc).__name__}: {exc}"
    return triton.__version__, None


def _triton_prerequisite(device: str, gpu_visible: bool) -> str | None:
    """Why the triton backend could not run on `device` even once it exists, or None."""
    version, error = _triton()
    if version is None:
        return error
    if device == "cuda" and not gpu_visible:
        return "no CUDA GPU visible"
    if device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return "triton runs on cpu only in interpreter mode (set TRITON_INTERPRET=1)"
    return None


def _cpp_reason(device: str) -> str | None:
    if not cpp_available():
        return f"eqkern._C is not available: {cpp_load_error()}"
    if device == "cuda" and not cuda_kernels_registered():
        return "eqkern._C was built without CUDA kernels: " + str(
            build_info().get("reason") or "see build info")
    return None


def info() -> dict:
    """Versions, what was built, and which backends can run on which device (with reasons).

    ``backends[device][name]`` is ``{"available": bool, "reason": str | None}``: whether the backend
    is installed for that device (``cpp`` on cuda = CUDA kernels registered), independent of whether
    a GPU is visible right now (that is ``cuda_devices``), as in ``eqkern.backends``.
    """
    gpu_count = torch.cuda.device_count()  # asks the driver; 0 without one (no CUDA init error)
    built = build_info()
    backends: dict[str, dict[str, dict]] = {}
    for device in ("cpu", "cuda"):
        reasons = {"reference": None, "torch": None, "cpp": _cpp_reason(device)}
        prereq = _triton_prerequisite(device, gpu_count > 0)
        reasons["triton"] = prereq if device == "cpu" else _triton_prerequisite(device, True)
        backends[device] = {k: {"available": v is None, "reason": v} for k, v in reasons.items()}
    return {
        "versions": {
            "eqkern": _version("eqkern") or getattr(sys.modules.get("eqkern"), "__version__", None),
            "torch": torch.__version__,
            "torch_cuda": torch.version.cuda,
            "python": platform.python_version(),
            "numpy": _version("numpy"),
            "triton": _triton()[0],
        },
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(gpu_count)],
        "cpu_threads": torch.get_num_threads(),
        "build": built or {"reason": "no eqkern/_build_info.json: the package was not built/installed"},
        "cpp": {"loaded": cpp_available(), "error": cpp_load_error(),
                "cuda_kernels_registered": cuda_kernels_registered()},
        "backends": backends,
    }


def format_info(d: dict) -> str:
    """Human-readable text for :func:`info`'s dict."""
    v = d["versions"]
    lines = ["eqkern " + str(v["eqkern"] or "(not installed)")]
    lines += [f"  {k:<13}{val if val is not None else 'not installed'}" for k, val in v.items()
              if k != "eqkern"]
    lines.append(f"  {'GPUs':<13}{', '.join(d['cuda_devices']) or 'none visible'}")
    lines.append(f"  {'CPU threads':<13}{d['cpu_threads']}")
    lines.append("build:")
    lines += [f"  {k:<15}{val}" for k, val in sorted(d["build"].items())]
    cpp = d["cpp"]
    lines.append("eqkern._C: " + ("loaded" if cpp["loaded"] else f"NOT loaded: {cpp['error']}")
                 + ("" if not cpp["loaded"] else
                    f" (CUDA kernels {'registered' if cpp['cuda_kernels_registered'] else 'not built'})"))
    lines.append("backends:" + ("" if d["cuda_devices"] else " (cuda: none can run here, no GPU is visible)"))
    for device, entries in d["backends"].items():
        for name, e in entries.items():
            lines.append(f"  {device:<5}{name:<10}" + ("yes" if e["available"] else f"no: {e['reason']}"))
    return "\n".join(lines)
