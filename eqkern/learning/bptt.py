"""BPTT for the same network and the same free phase: autograd through the settling steps.

The steps are those of a ``differentiable`` backend (:meth:`eqkern.backends.base.Backend.unroll`;
``torch`` by default), so BPTT and EP run the same dynamics.

Used as the baseline EP is checked against (GDU, Ernoult et al. 2019) and compared with in
memory. Its graph grows as ``O(T · Σ|s_l|)``: the point of EP is not to need it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from eqkern.errors import ArgumentError
from eqkern.model import energy
from eqkern.backends import BACKENDS, get_backend
from eqkern.backends import precision
from eqkern.backends.base import Backend, accumulate_grads, schedule_groups
from eqkern.learning.ep import scalar
from eqkern.model.checks import as_count
from eqkern.model.crnn import CRNN
from eqkern.dynamics.convergence import DEFAULT_CHECK_EVERY
from eqkern.dynamics.settle import check_phase_args, settle


@dataclass
class BPTTResult:
    """final_state: state after the free phase; predictions: ``(batch,)``; loss: mean loss;
    steps: the steps run (the prefix's, stopped early with ``tol``, and the ``truncate``
    unrolled)."""

    final_state: list[torch.Tensor]
    predictions: torch.Tensor
    loss: float
    steps: int


def bptt_gradients(
    model: CRNN,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    t_free: int,
    truncate: int | None = None,
    schedule: str = "synchronous",
    backend: str | None = None,
    tol: float | None = None,
    check_every: int = DEFAULT_CHECK_EVERY,
    prefix_backend: str | None = None,
) -> BPTTResult:
    """Add ``∂L(s_T)/∂θ`` (mean over the batch; ``L = L_EP + κ Σ L_aug`` with augmentation) to
    every ``.grad``, backpropagating through time.

    The free phase runs ``t_free`` steps from ``model.init_state``; the graph covers the last
    ``truncate`` steps (all of them by default), earlier steps run without a graph, so their end
    state is a constant, as in Laborieux's ``check_gdu``. ``schedule``: the schedule of the steps
    unrolled (``"synchronous"`` or ``"alternating"``), so that EP run with a schedule is compared
    with BPTT through the same dynamics.
    ``backend``: a ``differentiable`` backend (its steps unroll under autograd), ``"torch"`` by
    default; a backend that is not is a ValueError that says why.
    ``tol``, ``check_every``: the steps before the graph stop early at the convergence check of
    :func:`eqkern.settle` (``t_free - truncate`` the cap), so that BPTT unrolls the last
    ``truncate`` steps into the equilibrium as EP's nudged phases start from it; ``prefix_backend``:
    the backend of those steps (any: they run without a graph), ``backend`` by default.
    ``x: (batch, *model.input_shape)``, ``y: (batch,)`` class ids.
    A bfloat16 / float16 model runs the steps and their graph in float32 (as
    :func:`eqkern.ep_gradients`); ``final_state`` comes back in the model's dtype, the gradients
    in the parameters'. ``torch.autocast`` is refused with an ArgumentError that says this.
    """
    # BPTT backpropagates through at least one step: t_free = 0 has no graph to differentiate.
    t_free = as_count("t_free", t_free, minimum=1)
    truncate = t_free if truncate is None else as_count("truncate", truncate)
    if not 0 < truncate <= t_free:
        raise ArgumentError(f"truncate must be in 1..t_free={t_free}, got {truncate}")
    _, y = check_phase_args(model, x, 0.0, y)
    schedule_groups(model.num_layers, schedule)  # rejects an unknown schedule
    be = differentiable_backend(backend, x.device, model, schedule)
    storage = x.dtype
    # bf16/fp16: the steps and their graph in fp32 (eqkern.backends.precision), so the gradient
    # is autograd's of the fp32 dynamics, rounded once when written.
    with precision.compute_in(model) as dtype:
        x, y = x.to(dtype), precision.upcast_targets(y, dtype)
        state = model.init_state(x.shape[0], like=x)
        with torch.no_grad():
            _, prefix = settle(model, x, state, 0.0, t_free - truncate, backend=prefix_backend or be.name,
                               schedule=schedule, tol=tol, check_every=check_every, return_steps=True)
        with torch.enable_grad():
            state = be.unroll(model, x, state, truncate, schedule=schedule)
            loss = energy.total_loss(model, state, y) / x.shape[0]
            params = [p for p in model.parameters() if p.requires_grad]
            grads = torch.autograd.grad(loss, params, allow_unused=True) if params else ()
        final = [s.detach() for s in state]
        with torch.no_grad():
            predictions = model.predict(final)
    # Written after the block, in the parameters' own dtype; a parameter the loss does not reach
    # keeps its .grad, as with loss.backward().
    accumulate_grads({p: g for p, g in zip(params, grads) if g is not None})
    return BPTTResult([s.to(storage) for s in final], predictions, scalar(loss), prefix + truncate)


def differentiable_backend(name: str | None, device: torch.device, model: CRNN,
                           schedule: str = "synchronous") -> Backend:
    """The backend BPTT unrolls: ``name`` (default ``"torch"``), which must be differentiable."""
    name = name or "torch"
    if name in BACKENDS and not BACKENDS[name].differentiable:
        raise ArgumentError(f"bptt_gradients needs a differentiable backend, and {name!r} is not: "
                         f"its steps run without autograd; differentiable: "
                         f"{[n for n, be in BACKENDS.items() if be.differentiable]}")
    return get_backend(name, device, model, schedule=schedule)

