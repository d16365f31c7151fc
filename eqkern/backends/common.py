"""Small types and helpers shared by the backends."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass(frozen=True)
class Phase:
    """The end state of one phase of EP and the nudging strength it ran with.

    state: one ``(batch, *layer_shape)`` tensor per state layer; beta: 0 for the free phase.
    """

    state: Sequence[torch.Tensor]
    beta: float


def accumulate_grads(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor | None]) -> None:
    """Add ``grads`` into ``p.grad`` as ``backward()`` would (a missing gradient counts as zero)."""
    with torch.no_grad():
        for p, g in zip(params, grads):
            if g is None:
                g = torch.zeros_like(p)
            if p.grad is None:
                p.grad = g.detach().clone()
            else:
                p.grad.add_(g)
