"""Running one phase on a backend: a fixed number of steps, or until the state stops moving.

The convergence stop is one generic loop above the backends (any backend, any schedule): run
``check_every − 1`` steps through the backend, keep a copy of the state, run one more step and
reduce the largest absolute change of that step (max over layers and elements) on the device.
That reduction is read once per check, the only host synchronisation; the steps in between are
queued without one. The phase ends when the change is below ``tol``, or at ``steps`` (the cap).
"""

from __future__ import annotations

import logging
import math
import numbers
from dataclasses import replace

import torch

from eqkern.errors import ArgumentError, ArgumentTypeError
from eqkern.backends.base import Backend, PhaseInputs
from eqkern.model.checks import as_count
from eqkern.model.crnn import CRNN
from eqkern.validate import describe

logger = logging.getLogger("eqkern")

DEFAULT_CHECK_EVERY = 10


def check_stop_args(tol: float | None, check_every: int) -> tuple[float | None, int]:
    """``(tol, check_every)`` normalised, or an error naming ``tol`` (``None`` or a finite number
    > 0) or ``check_every`` (an integer >= 1)."""
    if tol is not None:
        want = "tol must be None or a finite number > 0"
        if isinstance(tol, bool) or not isinstance(tol, numbers.Real):
            raise ArgumentTypeError(f"{want}, got {describe(tol)}")
        tol = float(tol)
        if not (math.isfinite(tol) and tol > 0.0):
            raise ArgumentError(f"{want}, got {tol!r}")
    return tol, as_count("check_every", check_every, minimum=1)


def backend_settle(be: Backend, model: CRNN, phase: PhaseInputs, steps: int) -> None:
    """``steps`` steps of ``phase`` through backend ``be``, in place on ``phase.state``."""
    if steps > 0:
        be.settle(model, replace(phase, steps=steps))


def run_phase(
    be: Backend,
    model: CRNN,
    phase: PhaseInputs,
    *,
    tol: float | None = None,
    check_every: int = DEFAULT_CHECK_EVERY,
) -> int:
    """Settle ``phase.state`` in place on backend ``be`` and return the number of steps run.

    ``tol=None``: exactly ``phase.steps`` steps. Otherwise stop at the first check (every
    ``check_every`` steps, and at the cap) where ``max_l max |s_l(t) − s_l(t−1)| < tol``; at most
    ``phase.steps`` steps. The arguments are assumed checked (:func:`check_stop_args`).
    """
    steps, state = phase.steps, phase.state
    if tol is None:
        backend_settle(be, model, phase, steps)
        return steps
    last = [torch.empty_like(s) for s in state]
    used, change = 0, float("nan")
    while used < steps:
        chunk = min(check_every, steps - used)
        backend_settle(be, model, phase, chunk - 1)
        for p, s in zip(last, state):
            p.copy_(s)
        backend_settle(be, model, phase, 1)
        used += chunk
        change = torch.stack([(s - p).abs().amax() for s, p in zip(state, last)]).amax().item()
        if change < tol:
            break
    beta = phase.beta
    logger.debug("eqkern: phase (beta=%s, %s, backend %s) used %d of %d steps, last change %.3g "
                 "(tol %g)", "per-sample" if isinstance(beta, torch.Tensor) else beta,
                 phase.schedule, be.name, used, steps, change, tol)
    return used
