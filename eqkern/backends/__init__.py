"""The backends and their registry: which one runs, and why another cannot.

A backend is an instance of :class:`eqkern.backends.base.Backend` (settle, Hebbian gradients keyed
by parameter, the per-connection weight gradient, an availability probe and a capability check).
:data:`BACKENDS` maps the names to the four of them:

* ``reference``: autograd of Φ_β (the oracle; :mod:`.reference`);
* ``torch``: the analytic step in ATen calls (:mod:`.torch_backend`);
* ``cpp``: the analytic step as one C++/CUDA op per phase (:mod:`.cpp_backend`);
* ``triton``: fused Triton kernels (:mod:`.triton_backend`; CUDA, or the interpreter on CPU).

``backend=`` arguments and the ``EQKERN_BACKEND`` environment variable pick one by name; without
either, the fastest available on the device is used and the choice is logged once.
:func:`unavailable_reason` is the one availability probe (``eqkern info`` reports it);
:func:`get_backend` also asks the backend whether it runs the model with the schedule.
"""

from __future__ import annotations

import functools
import logging
import os

import torch

from eqkern.errors import ArgumentError
from eqkern.backends import cpp_backend, reference, torch_backend
from eqkern.backends import triton_backend  # imports no triton: the kernels load on first use
from eqkern.backends.base import Backend
from eqkern.backends.update_order import SCHEDULES

__all__ = ["BACKENDS", "Backend", "available_backends", "get_backend", "resolve_backend",
           "unavailable_reason", "unsupported_reason"]

logger = logging.getLogger("eqkern")

# The default and the fallback, fastest first (never the triton interpreter on cpu).
_FALLBACK_ORDER = ("cpp", "torch", "reference")

BACKENDS: dict[str, Backend] = {
    be.name: be for be in (reference.BACKEND, torch_backend.BACKEND, cpp_backend.BACKEND,
                           triton_backend.BACKEND)
}


def unavailable_reason(name: str, device: torch.device | str) -> str | None:
    """Why backend ``name`` cannot run on ``device``, or ``None`` if it can."""
    if name not in BACKENDS:
        return f"unknown backend {name!r}; known: {sorted(BACKENDS)}"
    return BACKENDS[name].unavailable_reason(torch.device(device))


def unsupported_reason(name: str, model, *, schedule: str = "synchronous") -> str | None:
    """Why backend ``name`` cannot run ``model`` with ``schedule``, or ``None`` if it can."""
    if name not in BACKENDS:
        return f"unknown backend {name!r}; known: {sorted(BACKENDS)}"
    return BACKENDS[name].unsupported_reason(model, schedule=schedule)


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Names of the backends that can run on ``device``."""
    return [n for n in BACKENDS if unavailable_reason(n, device) is None]


@functools.cache
def _default_backend(device_type: str) -> str:
    choice = next(n for n in _FALLBACK_ORDER if unavailable_reason(n, device_type) is None)
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
        raise ArgumentError(f"backend {name!r} cannot run on {device}: {reason}")
    return name


def get_backend(
    name: str | None,
    device: torch.device,
    model=None,
    *,
    schedule: str = "synchronous",
) -> Backend:
    """The backend selected by :func:`resolve_backend`, checked against ``model`` if given.

    A backend asked for by name (or ``$EQKERN_BACKEND``) that cannot run ``model`` with
    ``schedule`` is a ValueError giving its reason; the default falls back to the first available
    backend that can.
    """
    if schedule not in SCHEDULES:
        raise ArgumentError(f"unknown schedule {schedule!r}; known: {SCHEDULES}")
    chosen = BACKENDS[resolve_backend(name, device)]
    reason = None if model is None else chosen.unsupported_reason(model, schedule=schedule)
    if reason is None:
        return chosen
    capable = [n for n in BACKENDS if unsupported_reason(n, model, schedule=schedule) is None]
    if name or os.environ.get("EQKERN_BACKEND"):
        raise ArgumentError(f"{reason}; backends that can: {capable}")
    # The fastest capable one (the default never picks the triton interpreter on cpu).
    fallback = next(BACKENDS[n] for n in _FALLBACK_ORDER
                    if n in capable and unavailable_reason(n, device) is None)
    logger.debug("eqkern: the default backend %r cannot run this model (%s): using %r",
                 chosen.name, reason, fallback.name)
    return fallback
