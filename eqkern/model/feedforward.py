"""The feed-forward network of a CRNN's architecture: one bottom-up pass through the same
convolutions, pools, activations and read-out, no feedback and no settling.

It is the backprop ceiling of an EP-trained network (``method="bp"`` of the training engine
trains it with autograd, Laborieux et al. 2021 Table 1's "BP" column): the same parameter tensors
as the CRNN, so a run can be compared with EP and BPTT of the same network weight for weight.
With feedback switched off, each layer's fixed point is ``s_l = ρ_l(α_l · P_l(W_l * s_{l-1} + b_l))``,
which is what one pass computes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from eqkern.errors import ArgumentError
from eqkern.model import energy
from eqkern.model.activations import activate

if TYPE_CHECKING:
    from eqkern.model.crnn import CRNN

__all__ = ["feedforward_states", "feedforward_logits"]


def feedforward_states(model: CRNN, x: torch.Tensor) -> list[torch.Tensor]:
    """The state of every layer after one bottom-up pass (differentiable: runs under the caller's
    grad mode). ``x: (batch, *model.input_shape)``; returns one ``(batch, *state_shapes[i])``
    tensor per layer."""
    if model.skips:
        raise ArgumentError(f"the feed-forward pass of a CRNN has no skip links, and this model has "
                            f"{len(model.skips)} ({list(model.skips)}): train it by ep or bptt")
    states: list[torch.Tensor] = []
    s_in = x
    for i, spec in enumerate(model.specs):
        u, _ = energy.drive(model, i, s_in)
        s_in = activate(spec.activation, u * spec.alpha if spec.alpha != 1.0 else u)
        states.append(s_in)
    return states


def feedforward_logits(model: CRNN, x: torch.Tensor) -> torch.Tensor:
    """Read-out logits ``(batch, num_classes)`` of the feed-forward pass of ``x``."""
    return model.logits(feedforward_states(model, x)[-1])
