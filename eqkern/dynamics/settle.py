"""``settle``, ``free_phase``: run the neuron dynamics of a CRNN on the selected backend.

The backend is picked by :func:`eqkern.backends.get_backend` (by name, ``$EQKERN_BACKEND``, or the
fastest that can run the model) and the phase runs through :func:`.convergence.run_phase`.
"""

from __future__ import annotations

from typing import Sequence

import torch

from eqkern.errors import ArgumentError
from eqkern.backends import get_backend
from eqkern.backends import precision
from eqkern.backends.base import PhaseInputs
from eqkern.dynamics.convergence import DEFAULT_CHECK_EVERY, check_stop_args, run_phase
from eqkern.dynamics.solvers import check_solver
from eqkern.model import checks
from eqkern.model.crnn import CRNN, register_free_phase
from eqkern.validate import as_bool


def check_phase_args(
    model: CRNN,
    x: torch.Tensor,
    beta: float | torch.Tensor,
    targets: torch.Tensor | None,
    *,
    state: Sequence[torch.Tensor] = (),
) -> tuple[float | torch.Tensor, torch.Tensor | None]:
    """Validate the input, β and targets of a phase (and the values of ``state``, already checked
    for shape), with errors that say what is wrong; returns ``(beta, targets)`` normalised (β a
    float or a per-sample ``(batch,)`` tensor, the class ids int64).

    Reads the values once (one host sync, :func:`eqkern.model.checks.check_values`): a NaN in ``x``
    would otherwise come back as NaN gradients, a class id out of range as an indexing error.
    Every entry point (settle, free_phase, ep_gradients, bptt_gradients) comes through here, so
    this is where ``torch.autocast`` is refused (:func:`eqkern.backends.precision.check_no_autocast`)."""
    checks.check_input(model, x)
    precision.check_no_autocast(x)
    beta = checks.check_beta(beta, x)
    if (isinstance(beta, torch.Tensor) or beta != 0.0) and targets is None:
        raise ArgumentError("a nudged phase (beta != 0) needs targets")
    if targets is not None:
        targets = checks.check_targets(model, targets, x.shape[0])
    checks.check_values(model, x, targets=targets, beta=beta, state=state)
    return beta, targets


def settle(
    model: CRNN,
    x: torch.Tensor,
    state: list[torch.Tensor],
    beta: float | torch.Tensor,
    steps: int,
    targets: torch.Tensor | None = None,
    *,
    backend: str | None = None,
    schedule: str = "synchronous",
    tol: float | None = None,
    check_every: int = DEFAULT_CHECK_EVERY,
    return_steps: bool = False,
    cuda_graph: bool = False,
    solver: str = "plain",
) -> list[torch.Tensor] | tuple[list[torch.Tensor], int]:
    """Run ``steps`` steps of ``s ← ρ(∂Φ_β/∂s)`` from ``state``, in place.

    Args:
        model: the CRNN.
        x: ``(batch, *model.input_shape)``, clamped input.
        state: one ``(batch, *model.state_shapes[i])`` tensor per state layer; updated in place.
        beta: nudging strength (0 for the free phase), or a per-sample ``(batch,)`` tensor.
        steps: number of steps (the cap when ``tol`` is given).
        targets: ``(batch,)`` class ids of any integer dtype; needed when ``beta != 0``.
        backend: ``"reference"``, ``"torch"``, ``"cpp"``, ``"triton"``; default ``$EQKERN_BACKEND``
            or the fastest.
        schedule: ``"synchronous"`` (every layer from the same state) or ``"alternating"`` (even
            layers 0, 2, … first, then the odd ones from the new even ones). A backend that
            cannot run the model with it (skip links on the alternating schedule: torch and
            triton) is a ValueError that says why; the default then picks one that can.
        tol: stop early once the largest absolute change of one step (over layers and elements)
            is below ``tol``, checked every ``check_every`` steps (one host sync per check).
        return_steps: also return the number of steps run.
        cuda_graph: on CUDA with the ``cpp`` or ``triton`` backend, capture the phase (with
            ``tol``: each ``check_every`` chunk) once as a CUDA graph per model, shapes, dtype,
            steps and float β, and replay it: one launch instead of a few per layer and step, the
            same kernels and result (:mod:`eqkern.dynamics.cuda_graph`). Elsewhere the phase runs
            eagerly, with one warning per process saying why. Off by default.
        solver: ``"plain"`` (``s ← F(s)``, the default) or ``"anderson"``: safeguarded Anderson
            mixing of the last steps per sample, clamped to the activation's range, one ``F``
            per step as well (:mod:`eqkern.dynamics.solvers`: fewer steps to a tight ``tol``,
            but on a max-pooled network it may settle on another nearby equilibrium).
    Returns:
        ``state`` (the same tensors), or ``(state, steps_used)`` with ``return_steps=True``.

    Bad arguments are :mod:`eqkern.errors` errors naming the argument; the values of ``x``,
    ``state``, a per-sample ``beta`` and ``targets`` are read once (one host sync) and refused when
    not finite or out of range, so a NaN input is an error, not a NaN state.

    Precision: a model stored in float16 / bfloat16 (``model.to(torch.bfloat16)``, with ``x`` and
    ``state`` in that dtype) runs the steps in float32 from float32 copies of the weights and
    state, and ``state`` is rounded back to the storage dtype once, at the end
    (:mod:`eqkern.backends.precision`). ``torch.autocast`` is refused with an ArgumentError that
    says this.
    """
    steps = checks.as_count("steps", steps)
    tol, check_every = check_stop_args(tol, check_every)
    return_steps = as_bool("return_steps", return_steps)
    cuda_graph = as_bool("cuda_graph", cuda_graph)
    solver = check_solver(solver)
    checks.check_input(model, x)
    checks.check_state(model, state, x.shape[0])
    # The backends update state in place while reading x and the other layers.
    checks.check_no_overlap({f"state[{i}]": s for i, s in enumerate(state)}, {"x": x})
    beta, targets = check_phase_args(model, x, beta, targets, state=state)
    be = get_backend(backend, x.device, model, schedule=schedule)
    phase = PhaseInputs(x, state, beta, steps, targets, schedule)
    # A bf16/fp16 model settles in fp32 (eqkern.backends.precision); state is rounded back once.
    with precision.compute_in(model) as dtype:
        work = precision.upcast_phase(phase, dtype)
        used = run_phase(be, model, work, tol=tol, check_every=check_every, cuda_graph=cuda_graph,
                         solver=solver)
        precision.write_back(state, work.state)
    return (state, used) if return_steps else state


@torch.no_grad()
def spread_over_images(state: list[torch.Tensor]) -> torch.Tensor:
    """``(layers,)``: each state layer's standard deviation over the images (dim 0, no Bessel
    correction: the spread of these images), averaged over units. Near 0, the layer no longer
    depends on the input. ``state``: per layer ``(images, ...)``."""
    return torch.stack([s.std(0, correction=0).mean() for s in state])


def free_phase(
    model: CRNN,
    x: torch.Tensor,
    t_free: int,
    *,
    backend: str | None = None,
    schedule: str = "synchronous",
    tol: float | None = None,
    check_every: int = DEFAULT_CHECK_EVERY,
    return_steps: bool = False,
    cuda_graph: bool = False,
    solver: str = "plain",
) -> list[torch.Tensor] | tuple[list[torch.Tensor], int]:
    """The free-phase state after ``t_free`` steps from the initial state (inference); with
    ``tol``, stopped early as in :func:`ep_gradients`; ``return_steps``: also the steps run;
    ``cuda_graph``: replay a captured graph of the phase; ``solver``: as in :func:`settle`. The
    state is in the model's dtype (a bf16/fp16 model settles in fp32 and is rounded once, at the
    end)."""
    t_free = checks.as_count("t_free", t_free)
    checks.check_input(model, x)  # before init_state reads x's batch, dtype and device
    return settle(model, x, model.init_state(x.shape[0], like=x), 0.0, t_free, backend=backend,
                  schedule=schedule, tol=tol, check_every=check_every, return_steps=return_steps,
                  cuda_graph=cuda_graph, solver=solver)


# CRNN.forward runs this free phase (the model layer cannot import this one).
register_free_phase(free_phase)
