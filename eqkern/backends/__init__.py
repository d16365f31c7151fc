"""Backend registry and selection (SPEC §4).

A backend is a module with ``settle(model, x, state, beta, steps, y, schedule="synchronous")`` and
``hebbian_update(model, x, y, phase_a, phase_b)``; ``beta`` may be a per-sample ``(batch,)``
tensor. ``backend=`` arguments and the ``EQKERN_BACKEND`` environment variable pick one by name; without either, the fastest available on the device is
used and the choice is logged once.
"""

from __future__ import annotations

import functools
import logging
import os
from types import ModuleType

import torch

from eqkern.backends import torch_backend as analytic
from eqkern.backends import cpp_backend as cpp
from eqkern.backends import reference
from eqkern.backends import triton_backend  # imports no triton: the kernels load on first use

logger = logging.getLogger("eqkern")

BACKENDS: dict[str, ModuleType] = {"reference": reference, "torch": analytic, "cpp": cpp,
                                   "triton": triton_backend}


def unavailable_reason(name: str, device: torch.device) -> str | None:
    """Why backend ``name`` cannot run on ``device``, or ``None`` if it can."""
    if name not in BACKENDS:
        return f"unknown backend {name!r}; known: {sorted(BACKENDS)}"
    if name == "cpp":
        from eqkern.kernels import native as _build

        if not _build.cpp_available():
            return f"eqkern._C is not built or failed to load: {_build.cpp_load_error()}"
        if device.type == "cuda" and not _build.cuda_kernels_registered():
            return "eqkern._C was built without CUDA kernels (see `eqkern info`)"
        if device.type not in ("cpu", "cuda"):
            return f"the cpp backend runs on cpu and cuda, not {device.type}"
    if name == "triton":
        return _triton_reason(device)
    return None


def _triton_reason(device: torch.device) -> str | None:
    """Why the triton backend cannot run on ``device``: triton must import; on cpu the kernels
    must be interpreted, which ``TRITON_INTERPRET=1`` decides when ``eqkern.kernels.triton`` is imported."""
    import sys

    from eqkern.kernels import native as _build

    version, error = _build._triton()
    if version is None:
        return f"{error} (install triton>=3.6)"
    if device.type == "cuda":
        return None
    if device.type != "cpu":
        return f"the triton backend runs on cuda (and on cpu in the interpreter), not {device.type}"
    if os.environ.get("TRITON_INTERPRET") != "1":
        return "triton runs on cpu only in interpreter mode: set TRITON_INTERPRET=1 before importing eqkern"
    loaded = sys.modules.get("eqkern.kernels.triton._common")
    if loaded is not None and not loaded.INTERPRET:
        return ("eqkern.kernels.triton was imported before TRITON_INTERPRET=1 was set, so its kernels are "
                "compiled for a GPU: set it before the first import")
    return None


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Names of the backends that can run on ``device``."""
    device = torch.device(device)
    return [n for n in BACKENDS if unavailable_reason(n, device) is None]


@functools.cache
def _default_backend(device_type: str) -> str:
    choice = "cpp" if unavailable_reason("cpp", torch.device(device_type)) is None else "torch"
    logger.info("eqkern: using backend %r on %s (set EQKERN_BACKEND or backend= to change)",
                choice, device_type)
    return choice


def resolve_backend(name: str | None, device: torch.device) -> str:
    """The backend to use: ``name``, else ``$EQKERN_BACKEND``, else the fastest available."""
    name = name or os.environ.get("EQKERN_BACKEND") or None
    if name is None:
        return _default_backend(device.type)
    reason = unavailable_reason(name, device)
    if reason is not None:
        raise ValueError(f"backend {name!r} cannot run on {device}: {reason}")
    return name


# Every backend runs every model feature and option (LE/KD(W), separate feedback weights, skip
# links, the alternating schedule, a per-sample β) but one pair: skip links in the alternating
# order, which only these have (the alternating drives of torch and triton carry no skip terms).
ALTERNATING_SKIP_BACKENDS = ("cpp", "reference")


def backend_name(module: ModuleType) -> str:
    """The registry name of a backend module."""
    return next(name for name, mod in BACKENDS.items() if mod is module)


def get_backend(
    name: str | None,
    device: torch.device,
    model=None,
    *,
    schedule: str = "synchronous",
) -> ModuleType:
    """The backend module selected by :func:`resolve_backend` (for ``model``, if given).

    A model with skip links on the alternating schedule runs on ``ALTERNATING_SKIP_BACKENDS``
    only: asking for another one by name (or ``$EQKERN_BACKEND``) is a ValueError, the default
    falls back to the first of them that is available.
    """
    from eqkern.backends.base import SCHEDULES

    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; known: {SCHEDULES}")
    chosen = resolve_backend(name, device)
    if (model is None or not model.skips or schedule == "synchronous"
            or chosen in ALTERNATING_SKIP_BACKENDS):
        return BACKENDS[chosen]
    if name or os.environ.get("EQKERN_BACKEND"):
        raise ValueError(f"backend {chosen!r} does not implement skip links with "
                         f"schedule={schedule!r} yet; use one of {ALTERNATING_SKIP_BACKENDS}")
    fallback = next(b for b in ALTERNATING_SKIP_BACKENDS if unavailable_reason(b, device) is None)
    logger.debug("eqkern: the default backend %r has no skip links with schedule=%r: using %r",
                 chosen, schedule, fallback)
    return BACKENDS[fallback]
