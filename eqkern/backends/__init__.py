"""Backend registry and selection (SPEC §4).

A backend is a module with ``settle(model, x, state, beta, steps, y)`` and
``hebbian_update(model, x, y, phase_a, phase_b)``. ``backend=`` arguments and the ``EQKERN_BACKEND``
environment variable pick one by name; without either, the fastest available on the device is
used and the choice is logged once.
"""

from __future__ import annotations

import functools
import logging
import os
from types import ModuleType

import torch

from . import analytic, cpp, reference

logger = logging.getLogger("eqkern")

BACKENDS: dict[str, ModuleType] = {"reference": reference, "torch": analytic, "cpp": cpp}
# Known but not implemented yet: named here so that asking for them gives a precise error.
PLANNED = {"triton": "the triton backend is not implemented yet (issue 4)"}


def unavailable_reason(name: str, device: torch.device) -> str | None:
    """Why backend ``name`` cannot run on ``device``, or ``None`` if it can."""
    if name in PLANNED:
        return PLANNED[name]
    if name not in BACKENDS:
        return f"unknown backend {name!r}; known: {sorted(BACKENDS) + sorted(PLANNED)}"
    if name == "cpp":
        from .. import _build

        if not _build.cpp_available():
            return f"eqkern._C is not built or failed to load: {_build.cpp_load_error()}"
        if device.type == "cuda" and not _build.cuda_kernels_registered():
            return "eqkern._C was built without CUDA kernels (see `eqkern info`)"
        if device.type not in ("cpu", "cuda"):
            return f"the cpp backend runs on cpu and cuda, not {device.type}"
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


def get_backend(name: str | None, device: torch.device) -> ModuleType:
    """The backend module selected by :func:`resolve_backend`."""
    return BACKENDS[resolve_backend(name, device)]
