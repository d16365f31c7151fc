"""Backend ``torch`` (:class:`TorchBackend`): the analytic settling step and Hebbian update in
plain ATen calls.

No autograd and nothing kept alive across steps. Per step and layer:

    bottom-up  u_l = P_{l-1}(W_{l-1} * s_{l-1} + b_{l-1})        conv + bias + max-pool (indices)
    top-down   d_l = conv_transpose(unpool(s_{l+1}, idx_l), W_l)  (W_lᵀ s_{l+1} for FC)
               (separate feedback: B_l, and idx_l of P(B_l * s_l), see energy.feedback_indices)
    nudge      n_N = −β ∂L/∂s_N                                   read-out layer only
    s_l  ←  ρ(α_l u_l + γ_l d_l + n_l)

Layers are updated in place in the order 1…N, which equals the synchronous update because layer
``l``'s own forward conv (giving ``u_{l+1}`` and ``idx_l``) is computed before ``s_l`` is
overwritten and ``s_{l+1}`` is still the old one when ``d_l`` is read. :func:`layer_drives` yields
the terms lazily in exactly that order; :func:`step_` (in place) and :func:`step` (out of place,
differentiable, for BPTT) consume it.

The alternating schedule (``schedule="alternating"``) updates the even layers (0, 2, …) from the
current state, then the odd layers from the new even ones:
:func:`eqkern.backends.update_order.alternating_inputs` yields the layers in that order and
:func:`alternating_drives` adds their top-down and nudge terms (no skip terms yet:
``TorchBackend.unsupported_reason`` says so). The Hebbian update is
:func:`hebbian_gradients`, one :meth:`~eqkern.backends.base.Backend.connection_gradients` per
connection plus :mod:`eqkern.backends.shared_terms`.
``beta`` is a float or a per-sample ``(batch,)`` tensor everywhere (the ±β phases as one batch).
"""

from __future__ import annotations

from typing import Callable, Iterator, MutableSequence, Sequence

import torch

from eqkern.model import energy
from eqkern.model.activations import activate, activate_
from eqkern.model.crnn import CRNN, Conv
from eqkern.backends import shared_terms
from eqkern.backends.base import Backend, ParamGrads, Phase, PhaseInputs, nudged
from eqkern.backends.update_order import alternating_inputs, schedule_groups

# epilogue(state, u, d, n, alpha, gamma, activation): state ← ρ(α·u + γ·d + n), in place
Epilogue = Callable[
    [torch.Tensor, torch.Tensor, "torch.Tensor | None", "torch.Tensor | None", float, float, str],
    None,
]

LayerTerms = tuple[int, torch.Tensor, "torch.Tensor | None", "torch.Tensor | None"]


def layer_drives(
    model: CRNN,
    input_drive: torch.Tensor,
    state: Sequence[torch.Tensor],
    beta: float | torch.Tensor,
    y: torch.Tensor | None,
) -> Iterator[LayerTerms]:
    """Yield ``(i, u_i, d_i, n_i)`` for ``i = 0…N-1`` reading only pre-step values of ``state``.

    The consumer may overwrite ``state[i]`` as soon as item ``i`` is yielded: everything that needs
    the old ``state[i]`` (its forward conv and pool indices) has been computed by then.
    ``input_drive``: ``u_0 = P_0(W_0 * x + b_0)``, constant over a phase.
    """
    n_layers = len(state)
    # Skip links (FRE-RNN): a bottom-up term into layer j reads the OLD s_i, i < j, which is
    # overwritten before j's turn, so all of them are computed first, from the pre-step state.
    # The top-down term of layer i reads s_j, j > i, still old at i's turn: computed lazily.
    skip_up = energy.skip_drives(model, state) if model.skips else None
    u = input_drive
    for i in range(n_layers):
        s = state[i]
        u_next = d = None
        if i + 1 < n_layers:
            u_next, idx = energy.drive(model, i + 1, s)
            idx = energy.feedback_indices(model, i + 1, s, idx)
            d = energy.feedback(model, i + 1, state[i + 1], idx, s.shape)
        if skip_up is not None:
            u, d = _add_skips(model, i, state, u, d, skip_up)
        nudge = energy.layer_nudge(model, i, s, y, beta) if nudged(beta) else None
        yield i, u, d, nudge
        u = u_next


def _add_skips(model: CRNN, i: int, state: Sequence[torch.Tensor], u: torch.Tensor,
               d: torch.Tensor | None, skip_up: dict[int, torch.Tensor]):
    """``u_i + Σ R_ki s_k`` and ``d_i + Σ R_ijᵀ s_j`` out of place (``u_0`` is reused each step)."""
    if i in skip_up:
        u = u + skip_up[i]
    down = energy.skip_feedback(model, i, state)
    if down is not None:  # a source layer always has a layer above it, so d exists
        d = d + down
    return u, d


def alternating_drives(
    model: CRNN,
    input_drive: torch.Tensor,
    state: MutableSequence[torch.Tensor],
    beta: float | torch.Tensor,
    y: torch.Tensor | None,
    indices: dict[int, torch.Tensor | None] | None = None,
) -> Iterator[LayerTerms]:
    """Yield ``(i, u_i, d_i, n_i)`` in the alternating order (:func:`alternating_inputs`, whose
    contract the consumer keeps): even layers from the current state, odd ones from the new even."""
    n_layers = len(state)
    for i, u, idx in alternating_inputs(model, lambda j, s_in: energy.drive(model, j, s_in), input_drive, state,
                                        {} if indices is None else indices):
        s, d = state[i], None
        if i + 1 < n_layers:
            idx = energy.feedback_indices(model, i + 1, s, idx)
            d = energy.feedback(model, i + 1, state[i + 1], idx, s.shape)
        nudge = energy.layer_nudge(model, i, s, y, beta) if nudged(beta) else None
        yield i, u, d, nudge


def schedule_drives(
    model: CRNN,
    input_drive: torch.Tensor,
    state: MutableSequence[torch.Tensor],
    beta: float | torch.Tensor,
    y: torch.Tensor | None,
    schedule: str = "synchronous",
    indices: dict[int, torch.Tensor | None] | None = None,
) -> Iterator[LayerTerms]:
    """The terms of one step of ``schedule`` (:func:`layer_drives` or :func:`alternating_drives`)."""
    schedule_groups(len(state), schedule)  # rejects an unknown schedule
    if schedule == "synchronous":
        return layer_drives(model, input_drive, state, beta, y)
    return alternating_drives(model, input_drive, state, beta, y, indices)


def combine(
    u: torch.Tensor, d: torch.Tensor | None, n: torch.Tensor | None, alpha: float, gamma: float
) -> torch.Tensor:
    """``α·u + γ·d + n`` out of place (a missing term counts as zero)."""
    total = u * alpha if alpha != 1.0 else u
    if d is not None:
        total = total + d * gamma if gamma != 1.0 else total + d
    if n is not None:
        total = total + n
    return total


def torch_epilogue_(
    state: torch.Tensor,
    u: torch.Tensor,
    d: torch.Tensor | None,
    n: torch.Tensor | None,
    alpha: float,
    gamma: float,
    activation: str,
) -> None:
    """``state ← ρ(α·u + γ·d + n)`` with in-place ATen ops (no temporary the size of the layer)."""
    torch.mul(u, alpha, out=state)
    if d is not None:
        state.add_(d, alpha=gamma)
    if n is not None:
        state.add_(n)
    activate_(activation, state)


@torch.no_grad()
def step_(
    model: CRNN,
    input_drive: torch.Tensor,
    state: list[torch.Tensor],
    beta: float | torch.Tensor,
    y: torch.Tensor | None,
    epilogue: Epilogue = torch_epilogue_,
    schedule: str = "synchronous",
    indices: dict[int, torch.Tensor | None] | None = None,
) -> None:
    """One step of ``schedule``, in place on ``state`` (``indices``: see :func:`alternating_inputs`)."""
    for i, u, d, n in schedule_drives(model, input_drive, state, beta, y, schedule, indices):
        spec = model.specs[i]
        epilogue(state[i], u, d, n, spec.alpha, spec.gamma, spec.activation)


def step(
    model: CRNN,
    input_drive: torch.Tensor,
    state: Sequence[torch.Tensor],
    beta: float | torch.Tensor,
    y: torch.Tensor | None,
    schedule: str = "synchronous",
) -> list[torch.Tensor]:
    """One step of ``schedule``, out of place and differentiable (BPTT builds its graph with this)."""
    if schedule == "synchronous":
        return [
            activate(model.specs[i].activation, combine(u, d, n, model.specs[i].alpha, model.specs[i].gamma))
            for i, u, d, n in layer_drives(model, input_drive, state, beta, y)
        ]
    new = list(state)  # the generator reads the new even layers from here
    for i, u, d, n in schedule_drives(model, input_drive, new, beta, y, schedule):
        new[i] = activate(model.specs[i].activation,
                          combine(u, d, n, model.specs[i].alpha, model.specs[i].gamma))
    return new


@torch.no_grad()
def run_steps(model: CRNN, phase: PhaseInputs) -> None:
    """Run ``steps`` steps of ``schedule`` in place; the input drive ``u_0`` is computed once for
    the phase (and, alternating, the pool indices carried from step to step)."""
    x, state, beta, steps, y, schedule = (phase.x, phase.state, phase.beta, phase.steps,
                                          phase.targets, phase.schedule)
    input_drive = energy.drive(model, 0, x)[0]
    indices: dict[int, torch.Tensor | None] = {}
    for _ in range(steps):
        step_(model, input_drive, state, beta, y, schedule=schedule, indices=indices)


@torch.no_grad()
def hebbian_gradients(backend: Backend, model: CRNN, x: torch.Tensor, y, a: Phase, b: Phase) -> ParamGrads:
    """The contrastive Hebbian update of every parameter of ``model.ep_parameters()``.

    ``g_θ = −[∂Φ_{β_a}/∂θ(s_a) − ∂Φ_{β_b}/∂θ(s_b)] / ((β_a − β_b)·batch)``. Per conv layer it is one
    ``backend.connection_gradients`` over the concatenated batch ``[s_l^a, s_l^b]`` against
    ``[s_{l+1}^a, −s_{l+1}^b]`` (each half unpooled with its own phase's pool indices); per FC
    layer one GEMM; the read-out, LE/KDW maps and skip links: :mod:`.shared_terms`.
    """
    scale = shared_terms.hebbian_scale(x, a, b)
    inputs = torch.cat([x, x])
    grads: ParamGrads = {}
    for i, (spec, conn) in enumerate(zip(model.specs, model.connections)):
        signed_out = torch.cat([a.state[i], -b.state[i]])
        if isinstance(spec, Conv) and i == 0:
            # Both phases see the same clamped x (and so the same pool indices): subtract the two
            # halves before the GEMM. Half the FLOPs, and no fp32 cancellation between two large,
            # nearly equal terms.
            inputs, signed_out = x, a.state[0] - b.state[0]
        gw, _ = backend.connection_gradients(model, i, inputs, signed_out)
        # The bias term: subtract first, so that fp32 does not cancel two large, nearly equal sums.
        grads[conn.weight] = gw * scale
        grads[conn.bias] = shared_terms.bias_gradient(a.state[i] - b.state[i]) * scale
        inputs = torch.cat([a.state[i], b.state[i]])
    grads.update(shared_terms.small_terms(model, x, y, a, b))
    return grads


class TorchBackend(Backend):
    """ATen calls: the analytic step and Hebbian update, no autograd (module docstring).

    ``connection_gradients``: ATen's weight-gradient convolution / GEMM (the shared default).
    Skip links run on the synchronous schedule only: :func:`alternating_drives` has no skip terms.
    ``unroll`` runs :func:`step` under autograd (BPTT).
    """

    name = "torch"
    differentiable = True
    alternating_skips = False

    def settle(self, model: CRNN, phase: PhaseInputs) -> None:
        run_steps(model, phase)

    def unroll(self, model: CRNN, x: torch.Tensor, state: Sequence[torch.Tensor], steps: int, *,
               schedule: str = "synchronous") -> list[torch.Tensor]:
        input_drive = energy.drive(model, 0, x)[0]  # constant over the phase: one conv
        state = list(state)
        for _ in range(steps):
            state = step(model, input_drive, state, 0.0, None, schedule)
        return state

    def hebbian_gradients(self, model: CRNN, x: torch.Tensor, y, a: Phase, b: Phase) -> ParamGrads:
        return hebbian_gradients(self, model, x, y, a, b)


BACKEND = TorchBackend()
