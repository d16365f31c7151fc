"""Running one phase on a backend: a fixed number of steps, or until the state stops moving.

The convergence stop is one generic loop above the backends (any backend, any schedule): run
``check_every − 1`` steps through the backend, keep a copy of the state, run one more step and
reduce the largest absolute change of that step (max over layers and elements) on the device.
That reduction is read once per check, the only host synchronisation; the steps in between are
queued without one. The phase ends when the change is below ``tol``, or at ``steps`` (the cap).

The unit both paths run is a *chunk* (:func:`phase_chunk`): the whole phase without ``tol``, one
check's ``check_every`` steps with it. ``cuda_graph=True`` replays each chunk from a captured CUDA
graph (:mod:`.cuda_graph`), the same kernels in the same order, so the host still reads one number
per check and nothing else changes.
"""

from __future__ import annotations

import logging
import math
import numbers
from dataclasses import replace

import torch

from eqkern.errors import ArgumentError, ArgumentTypeError
from eqkern.backends.base import Backend, PhaseInputs
from eqkern.dynamics import cuda_graph as graphs
from eqkern.dynamics.solvers import anderson_runner
from eqkern.model.checks import as_count
from eqkern.model.crnn import CRNN
from eqkern.validate import describe

logger = logging.getLogger("eqkern")

# Every 5 steps: a check costs one state copy and one max-reduction, and a phase overshoots its
# stop by up to check_every - 1 steps (VGG-5 batch 128: 60 steps per EP iteration at 5, 70 at 10;
# bench/results/headline.md).
DEFAULT_CHECK_EVERY = 5
# The tolerance of the training presets (eqkern.training.config): on trained VGG-5 / VGG-7 nets its
# EP updates are those of the papers' fixed T = 250 (bench/results/steps.md); tol=None keeps T.
DEFAULT_TOL = 1e-3


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


def phase_chunk(be: Backend, model: CRNN, phase: PhaseInputs,
                last: list[torch.Tensor] | None) -> torch.Tensor | None:
    """``phase.steps`` steps in place; with ``last`` (one buffer per layer, overwritten) the last
    step is run apart and its largest absolute change (over layers and elements) comes back as a
    0-d tensor on the device, not read (reading it is the check's one host sync)."""
    if last is None:
        backend_settle(be, model, phase, phase.steps)
        return None
    backend_settle(be, model, phase, phase.steps - 1)
    for p, s in zip(last, phase.state):
        p.copy_(s)
    backend_settle(be, model, phase, 1)
    return torch.stack([(s - p).abs().amax() for s, p in zip(phase.state, last)]).amax()


def phase_runner(be: Backend, model: CRNN, phase: PhaseInputs, track: bool,
                 cuda_graph: bool, solver: str = "plain") -> graphs.Runner:
    """How :func:`run_phase` runs a chunk of ``phase``: eagerly, or (``cuda_graph``) by replays
    where :mod:`.cuda_graph` can capture it, or by Anderson mixing (``solver="anderson"``,
    eager); ``track``: the chunks return their change."""
    if solver == "anderson":
        if cuda_graph:
            graphs.warn_once("solver-anderson", "only the plain solver is captured, not "
                             "solver='anderson'")
        return anderson_runner(be, model, phase, track)
    last = [torch.empty_like(s) for s in phase.state] if track else None

    def eager(ph: PhaseInputs) -> torch.Tensor | None:
        return phase_chunk(be, model, ph, last)

    if not cuda_graph:
        return eager
    return graphs.chunk_runner(be, model, phase, track,
                               lambda ph, buffers: phase_chunk(be, model, ph, buffers), eager)


def run_phase(
    be: Backend,
    model: CRNN,
    phase: PhaseInputs,
    *,
    tol: float | None = None,
    check_every: int = DEFAULT_CHECK_EVERY,
    cuda_graph: bool = False,
    solver: str = "plain",
) -> int:
    """Settle ``phase.state`` in place on backend ``be`` and return the number of steps run.

    ``tol=None``: exactly ``phase.steps`` steps. Otherwise stop at the first check (every
    ``check_every`` steps, and at the cap) where ``max_l max |s_l(t) − s_l(t−1)| < tol``; at most
    ``phase.steps`` steps. ``cuda_graph``: replay captured chunks where possible (same result;
    the plain solver only). ``solver``: ``"plain"`` (``s ← F(s)``) or ``"anderson"``
    (:mod:`.solvers`), which also evaluates ``F`` once per step and stops on the same test.
    The arguments are assumed checked (:func:`check_stop_args`, ``as_bool``, ``check_solver``).
    """
    steps = phase.steps
    run = phase_runner(be, model, phase, tol is not None, cuda_graph, solver)
    if tol is None:
        run(phase)
        return steps
    used, change = 0, float("nan")
    while used < steps:
        chunk = min(check_every, steps - used)
        change = run(replace(phase, steps=chunk)).item()
        used += chunk
        if change < tol:
            break
    beta = phase.beta
    logger.debug("eqkern: phase (beta=%s, %s, backend %s, solver %s) used %d of %d steps, last "
                 "change %.3g (tol %g)", "per-sample" if isinstance(beta, torch.Tensor) else beta,
                 phase.schedule, be.name, solver, used, steps, change, tol)
    return used
