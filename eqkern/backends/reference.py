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
from .common import Phase, accumulate_grads, schedule_groups


def _has_scales(model: CRNN) -> bool:
    return any(spec.alpha != 1.0 or spec.gamma != 1.0 for spec in model.specs)


def primitive(
    model: CRNN,
    x: torch.Tensor,
    state: Sequence[torch.Tensor],
    beta: float | torch.Tensor,
    y: torch.Tensor | None,
    scaled: bool = False,
) -> torch.Tensor:
    """Φ_β(x, s, θ) summed over the batch (SPEC §1, Lin eq. 1 and 10, Laborieux eq. 6).

    ``Φ = Σ_l ⟨s_{l+1}, P_l(W_l * s_l + b_l)⟩ (conv) or ⟨s_{l+1}, W_l·flat(s_l) + b_l⟩ (FC)``,
    ``Φ_β = Φ − β·L(ŷ, y) − βκ Σ_i L_aug,i(s_i)``. With ``scaled=True`` each coupling term is split so that its
    gradient is ``α_{l+1}`` times the bottom-up drive of ``s_{l+1}`` and ``γ_l`` times the top-down
    term of ``s_l`` (FRE-RNN scales); the split is a pseudo-energy for the dynamics only.
    ``beta``: a float, or a per-sample ``(batch,)`` tensor: ``Σ_b β_b (L_b + κ L_aug,b)``.
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
    if isinstance(beta, torch.Tensor):
        phi = phi - (model.loss(state[-1], y, beta) + model.augmented_loss(state, y, beta))
    elif beta != 0.0:
        phi = phi - beta * (model.loss(state[-1], y) + model.augmented_loss(state, y))
    return phi


def settle(
    model: CRNN,
    x: torch.Tensor,
    state: list[torch.Tensor],
    beta: float | torch.Tensor,
    steps: int,
    y: torch.Tensor | None,
    schedule: str = "synchronous",
) -> list[torch.Tensor]:
    """Run ``steps`` steps ``s ← ρ(∂Φ_β/∂s)``; ``state`` is updated in place.

    ``schedule="synchronous"``: every layer from the same state. ``"alternating"``: the even layers
    (0, 2, …) from the current state, then the odd layers from the state with the new even layers.
    """
    scaled = _has_scales(model)
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
    return state


def hebbian_update(model: CRNN, x: torch.Tensor, y: torch.Tensor, a: Phase, b: Phase) -> None:
    """Add ``−[∂Φ_{β_a}/∂θ(s_a) − ∂Φ_{β_b}/∂θ(s_b)] / ((β_a − β_b)·batch)`` to every ``.grad``."""
    params = [p for p in model.parameters() if p.requires_grad]  # frozen LE projections: none
    with torch.enable_grad():
        delta = primitive(model, x, a.state, a.beta, y) - primitive(model, x, b.state, b.beta, y)
        delta = -delta / ((a.beta - b.beta) * x.shape[0])
        grads = torch.autograd.grad(delta, params, allow_unused=True)
    accumulate_grads(params, grads)
