"""``eqkern info``: versions, what was built, and which backends can run on which device.

The backends' entries come from the registry's availability probe
(:func:`eqkern.backends.unavailable_reason`), the same one that ``backend=`` selection uses, so the
report and the selection cannot disagree; the build facts come from :mod:`eqkern.kernels.native`.
"""

from __future__ import annotations

import importlib.metadata
import platform
import sys

import torch

from eqkern.backends import BACKENDS, unavailable_reason
from eqkern.kernels import native, precision

DEVICES = ("cpu", "cuda")


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def backend_entries() -> dict[str, dict[str, dict]]:
    """``{device: {name: {"available": bool, "reason": str | None}}}`` for every registered backend.

    Whether a backend is installed for the device (``cpp`` on cuda: CUDA kernels registered),
    independent of whether a GPU is visible right now (that is ``info()["cuda_devices"]``)."""
    out: dict[str, dict[str, dict]] = {}
    for device in DEVICES:
        reasons = {name: unavailable_reason(name, torch.device(device)) for name in BACKENDS}
        out[device] = {k: {"available": v is None, "reason": v} for k, v in reasons.items()}
    return out


def info() -> dict:
    """Versions, what was built, and which backends can run on which device (with reasons).

    ``backends[device][name]`` is ``{"available": bool, "reason": str | None}``
    (:func:`backend_entries`).
    """
    gpu_count = torch.cuda.device_count()  # asks the driver; 0 without one (no CUDA init error)
    built = native.build_info()
    return {
        "versions": {
            "eqkern": _version("eqkern") or getattr(sys.modules.get("eqkern"), "__version__", None),
            "torch": torch.__version__,
            "torch_cuda": torch.version.cuda,
            "python": platform.python_version(),
            "numpy": _version("numpy"),
            "triton": native.triton_status()[0],
        },
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(gpu_count)],
        "cpu_threads": torch.get_num_threads(),
        "precision": precision.describe(),
        "build": built or {"reason": "no eqkern/_build_info.json: the package was not built/installed"},
        "cpp": {"loaded": native.cpp_available(), "error": native.cpp_load_error(),
                "cuda_kernels_registered": native.cuda_kernels_registered()},
        "backends": backend_entries(),
    }


def format_info(d: dict) -> str:
    """Human-readable text for :func:`info`'s dict."""
    v = d["versions"]
    lines = ["eqkern " + str(v["eqkern"] or "(not installed)")]
    lines += [f"  {k:<13}{val if val is not None else 'not installed'}" for k, val in v.items()
              if k != "eqkern"]
    lines.append(f"  {'GPUs':<13}{', '.join(d['cuda_devices']) or 'none visible'}")
    lines.append(f"  {'CPU threads':<13}{d['cpu_threads']}")
    p = d["precision"]
    lines.append(f"  {'fp32 on CUDA':<13}{p['fp32_math']} (EQKERN_TF32={int(p['tf32'])}, "
                 f"Triton fp32 dots {p['triton_fp32_dot']})")
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
