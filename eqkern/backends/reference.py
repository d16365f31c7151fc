"""Backend ``reference``: autograd of the primitive function Φ_β, as Laborieux's code does.

This is the oracle every other backend is tested against, so it is kept short and obviously
right: Φ_β is written once (:func:`primitive`), the dynamics are ``s ← ρ(∂Φ_β/∂s)`` through
``torch.autograd.grad`` at every step, and the learning rule is the autograd of
``ΔΦ = −[Φ_{β_a}(s_a) − Φ_{β_b}(s_b)] / (β_a − β_b)`` with respect to the parameters.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..activations import activate
from ..model import CRNN
from .common import Phase, accumulate_grads


def _has_scales(model: CRNN) -> bool:
    return any(spec.alpha != 1.0 or spec.gamma != 1.0 for spec in model.specs)


def primitive(
    model: CRNN,
    x: torch.Tensor,
    state: Sequence[torch.Tensor],
    beta: float,
    y: torch.Tensor | None,
    scaled: bool = False,
) -> torch.Tensor:
    """Φ_β(x, s, θ) summed over the batch (SPEC §1, Lin eq. 1 and 10, Laborieux eq. 6).

    ``Φ = Σ_l ⟨s_{l+1}, P_l(W_l * s_l + b_l)⟩ (conv) or ⟨s_{l+1}, W_l·flat(s_l) + b_l⟩ (FC)``,
    ``Φ_β = Φ − β·L(ŷ, y) − βκ Σ_i L_aug,i(s_i)``. With ``scaled=True`` each coupling term is split so that its
    gradient is ``α_{l+1}`` times the bottom-up drive of ``s_{l+1}`` and ``γ_l`` times the top-down
    term of ``s_l`` (FRE-RNN scales); the split is a pseudo-energy for the dynamics only.
    Skip links add ``Σ_{(i,j)} ⟨s_j, R_ij(s_i)⟩`` (split the same way: ``α_j`` on ``s_j``'s side,
    ``γ_i`` on ``s_i``'s).
    """
    phi = x.new_zeros(())
    s_in = x
    for i, s in enumerate(state):
        if scaled:
            spec = model.specs[i]
            phi = phi + spec.alpha * (s * model.drive(i, s_in.detach())[0]).sum()
            if i > 0:
                phi = phi + model.specs[i - 1].gamma * (s.detach() * model.drive(i, s_in)[0]).sum()
        else:
            phi = phi + (s * model.drive(i, s_in)[0]).sum()
        s_in = s
    for (i, j), link in zip(model.skips, model.skip_links):  # FRE-RNN skip links ⟨s_j, R_ij s_i⟩
        if scaled:
            phi = phi + model.specs[j].alpha * (state[j] * link(state[i].detach())).sum()
            phi = phi + model.specs[i].gamma * (state[j].detach() * link(state[i])).sum()
        else:
            phi = phi + (state[j] * link(state[i])).sum()
    if beta != 0.0:
        phi = phi - beta * (model.loss(state[-1], y) + model.augmented_loss(state, y))
    return phi


def settle(
    model: CRNN,
    x: torch.Tensor,
    state: list[torch.Tensor],
    beta: float,
    steps: int,
    y: torch.Tensor | None,
) -> list[torch.Tensor]:
    """Run ``steps`` synchronous steps ``s ← ρ(∂Φ_β/∂s)``; ``state`` is updated in place."""
    scaled = _has_scales(model)
    for _ in range(steps):
        leaves = [s.detach().requires_grad_() for s in state]
        with torch.enable_grad():
            phi = primitive(model, x, leaves, beta, y, scaled)
            grads = torch.autograd.grad(phi, leaves)
        with torch.no_grad():
            for s, g, spec in zip(state, grads, model.specs):
                s.copy_(activate(spec.activation, g))
    return state


def hebbian_update(model: CRNN, x: torch.Tensor, y: torch.Tensor, a: Phase, b: Phase) -> None:
    """Add ``−[∂Φ_{β_a}/∂θ(s_a) − ∂Φ_{β_b}/∂θ(s_b)] / ((β_a − β_b)·batch)`` to every ``.grad``."""
    params = [p for p in model.parameters() if p.requires_grad]  # frozen LE projections: none
    with torch.enable_grad():
        delta = primitive(model, x, a.state, a.beta, y) - primitive(model, x, b.state, b.beta, y)
        delta = -delta / ((a.beta - b.beta) * x.shape[0])
        grads = torch.autograd.grad(delta, params, allow_unused=True)
    accumulate_grads(params, grads)
