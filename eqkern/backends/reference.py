"""Backend ``reference`` (:class:`ReferenceBackend`): autograd of the primitive function Φ_β, as
Laborieux's code does.

This is the oracle every other backend is tested against, so it is kept short and obviously
right: Φ_β is written once (:func:`primitive`), the dynamics are ``s ← ρ(∂Φ_β/∂s)`` through
``torch.autograd.grad`` at every step, and the learning rule is the autograd of
``ΔΦ = −[Φ_{β_a}(s_a) − Φ_{β_b}(s_b)] / (β_a − β_b)`` with respect to the parameters.
"""

from __future__ import annotations

from typing import Sequence

import torch

from eqkern.model import energy
from eqkern.model.activations import activate
from eqkern.model.crnn import CRNN
from eqkern.backends.base import Backend, ParamGrads, Phase, PhaseInputs
from eqkern.backends.update_order import schedule_groups


def _has_scales(model: CRNN) -> bool:
    return any(spec.alpha != 1.0 or spec.gamma != 1.0 for spec in model.specs)


def _split(model: CRNN) -> bool:
    """The dynamics need the split (per-layer) form: FRE-RNN scales, or separate feedback."""
    return model.separate_feedback or _has_scales(model)


def primitive(
    model: CRNN,
    x: torch.Tensor,
    state: Sequence[torch.Tensor],
    beta: float | torch.Tensor,
    y: torch.Tensor | None,
    scaled: bool = False,
) -> torch.Tensor:
    """Φ_β(x, s, θ) summed over the batch (Lin eq. 1 and 10, Laborieux eq. 6).

    ``Φ = Σ_l ⟨s_{l+1}, P_l(W_l * s_l + b_l)⟩ (conv) or ⟨s_{l+1}, W_l·flat(s_l) + b_l⟩ (FC)``,
    ``Φ_β = Φ − β·L(ŷ, y) − βκ Σ_i L_aug,i(s_i)``. With ``scaled=True`` each coupling term is split so that its
    gradient is ``α_{l+1}`` times the bottom-up drive of ``s_{l+1}`` and ``γ_l`` times the top-down
    term of ``s_l`` (FRE-RNN scales); the split is a pseudo-energy for the dynamics only. With
    separate feedback (``model.separate_feedback``, always split) the top-down part uses ``B_l``:
    this is Laborieux's ``Σ_n Φ̃_n`` (App. D.3, eq. 46), whose gradient with respect to ``s_n``
    (the other layers detached) is the vector field ``F_n`` of eq. 40; it is not a primitive.
    ``beta``: a float, or a per-sample ``(batch,)`` tensor: ``Σ_b β_b (L_b + κ L_aug,b)``.
    Skip links add ``Σ_{(i,j)} ⟨s_j, R_ij(s_i)⟩`` (split the same way: ``α_j`` on ``s_j``'s side,
    ``γ_i`` on ``s_i``'s).
    """
    phi = x.new_zeros(())
    s_in = x
    for i, s in enumerate(state):
        if scaled:
            spec = model.specs[i]
            phi = phi + spec.alpha * (s * energy.drive(model, i, s_in.detach())[0]).sum()
            if i > 0:
                phi = phi + model.specs[i - 1].gamma * (s.detach() * energy.feedback_drive(model, i, s_in)[0]).sum()
        else:
            phi = phi + (s * energy.drive(model, i, s_in)[0]).sum()
        s_in = s
    for (i, j), link in zip(model.skips, model.skip_links):  # FRE-RNN skip links ⟨s_j, R_ij s_i⟩
        if scaled:
            phi = phi + model.specs[j].alpha * (state[j] * link(state[i].detach())).sum()
            phi = phi + model.specs[i].gamma * (state[j].detach() * link(state[i])).sum()
        else:
            phi = phi + (state[j] * link(state[i])).sum()
    if isinstance(beta, torch.Tensor):
        phi = phi - (energy.loss(model, state[-1], y, beta) + energy.augmented_loss(model, state, y, beta))
    elif beta != 0.0:
        phi = phi - beta * (energy.loss(model, state[-1], y) + energy.augmented_loss(model, state, y))
    return phi


def run_steps(model: CRNN, phase: PhaseInputs) -> None:
    """Run ``steps`` steps ``s ← ρ(∂Φ_β/∂s)``; ``state`` is updated in place.

    ``schedule="synchronous"``: every layer from the same state. ``"alternating"``: the even layers
    (0, 2, …) from the current state, then the odd layers from the state with the new even layers.
    """
    x, state, beta, steps, y, schedule = (phase.x, phase.state, phase.beta, phase.steps,
                                          phase.targets, phase.schedule)
    scaled = _split(model)
    groups = schedule_groups(len(state), schedule)
    for _ in range(steps):
        for group in groups:
            leaves = [s.detach().requires_grad_() for s in state]
            with torch.enable_grad():
                phi = primitive(model, x, leaves, beta, y, scaled)
                grads = torch.autograd.grad(phi, [leaves[i] for i in group])
            with torch.no_grad():
                for i, g in zip(group, grads):
                    state[i].copy_(activate(model.specs[i].activation, g))


def hebbian_gradients(model: CRNN, x: torch.Tensor, y, a: Phase, b: Phase) -> ParamGrads:
    """``−[∂Φ_{β_a}/∂θ(s_a) − ∂Φ_{β_b}/∂θ(s_b)] / ((β_a − β_b)·batch)`` for every trainable
    parameter of ``model.ep_parameters()``, by autograd of ``ΔΦ``."""
    params = [p for p in model.ep_parameters() if p.requires_grad]
    with torch.enable_grad():
        delta = primitive(model, x, a.state, a.beta, y) - primitive(model, x, b.state, b.beta, y)
        delta = -delta / ((a.beta - b.beta) * x.shape[0])
        grads = torch.autograd.grad(delta, params, allow_unused=True)
    # A parameter Φ does not reach (none at the time of writing) has a zero gradient.
    return {p: torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)}


class ReferenceBackend(Backend):
    """Autograd of Φ_β: the oracle the other backends are tested against (module docstring).

    ``connection_gradients``: ATen's weight-gradient convolution / GEMM (the shared default; the
    autograd of one coupling term would compute the same product). Runs every model and schedule.
    """

    name = "reference"

    def settle(self, model: CRNN, phase: PhaseInputs) -> None:
        run_steps(model, phase)

    def hebbian_gradients(self, model: CRNN, x: torch.Tensor, y, a: Phase, b: Phase) -> ParamGrads:
        return hebbian_gradients(model, x, y, a, b)


BACKEND = ReferenceBackend()
