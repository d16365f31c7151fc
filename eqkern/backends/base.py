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


# β of a phase is one float for the whole batch, or a per-sample ``(batch,)`` tensor (the +β and −β
# phases run as one batch of 2B, eqkern.learning's ``batched_nudge``); eqkern.model.auxiliary.per_sample
# shapes it for the nudge terms.
def nudged(beta: float | torch.Tensor) -> bool:
    """Whether a phase has nudge terms: a per-sample β tensor always counts as nudged (reading its
    values would synchronise the device)."""
    return isinstance(beta, torch.Tensor) or beta != 0.0



SCHEDULES = ("synchronous", "alternating")


def schedule_groups(n_layers: int, schedule: str) -> list[list[int]]:
    """The layers updated together, in order, within one step: all of them (synchronous), or the
    even ones then the odd ones (alternating)."""
    if schedule == "synchronous":
        return [list(range(n_layers))]
    if schedule == "alternating":
        return [g for g in (list(range(0, n_layers, 2)), list(range(1, n_layers, 2))) if g]
    raise ValueError(f"unknown schedule {schedule!r}; known: {SCHEDULES}")
