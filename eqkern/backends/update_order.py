"""The order in which one step updates the layers, shared by the backends that build their own steps.

``schedule="synchronous"`` updates every layer from the same state; ``"alternating"`` updates the
even layers (0, 2, …) from the current state, then the odd layers from the new even ones.
:func:`schedule_groups` gives those groups (the reference backend differentiates Φ_β once per
group); :func:`alternating_inputs` walks the alternating order with the bottom-up drives and the
pool indices a layer's top-down term needs, for any drive function (ATen in the torch backend,
the forward kernel in the triton backend).
"""

from __future__ import annotations

from typing import Iterator, MutableSequence

import torch

from eqkern.errors import ArgumentError
from eqkern.model import energy
from eqkern.model.crnn import CRNN
from eqkern.model.specs import Conv

SCHEDULES = ("synchronous", "alternating")


def schedule_groups(n_layers: int, schedule: str) -> list[list[int]]:
    """The layers updated together, in order, within one step: all of them (synchronous), or the
    even ones then the odd ones (alternating)."""
    if schedule == "synchronous":
        return [list(range(n_layers))]
    if schedule == "alternating":
        return [g for g in (list(range(0, n_layers, 2)), list(range(1, n_layers, 2))) if g]
    raise ArgumentError(f"unknown schedule {schedule!r}; known: {SCHEDULES}")


def pooled(model: CRNN, i: int) -> bool:
    """Whether connection ``i`` ends in a max-pool (so its top-down term needs pool indices)."""
    spec = model.specs[i]
    return isinstance(spec, Conv) and spec.pool


def alternating_inputs(
    model: CRNN,
    drive: energy.Drive,
    input_drive: torch.Tensor,
    state: MutableSequence[torch.Tensor],
    indices: dict[int, torch.Tensor | None],
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor | None]]:
    """Yield ``(i, u_i, idx_i)`` for the even layers, then the odd layers, of one alternating step.

    ``u_i``: the bottom-up drive of layer ``i`` from the current ``state[i-1]`` (``input_drive``
    for layer 0); ``idx_i``: the pool indices of connection ``i+1`` at the current ``state[i]``,
    through which the top-down term of layer ``i`` is unpooled (None at the top or without a pool).
    The consumer writes layer ``i``'s new value into ``state[i]`` (in place, or by replacing the
    list entry) before asking for the next item, so the odd layers read the new even ones.

    ``indices`` keeps the pool indices that a drive yields as a by-product for the layer that
    needs them next (``indices[i]`` belongs to ``state[i]`` as it is now, and is used up when
    layer ``i`` is updated). Passing one dict to all the steps of a phase, with nothing else
    writing the state in between, leaves a forward conv per even layer only in the first step.
    """
    n_layers = len(state)
    for i in [*range(0, n_layers, 2), *range(1, n_layers, 2)]:
        if i == 0:
            u = input_drive
        else:
            u, indices[i - 1] = drive(i, state[i - 1])
        idx = None
        if i + 1 < n_layers and pooled(model, i + 1):
            idx = indices.pop(i) if i in indices else drive(i + 1, state[i])[1]
        indices.pop(i, None)  # state[i] is about to change
        yield i, u, idx
