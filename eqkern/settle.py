"""``settle``: run the neuron dynamics of a CRNN for a number of steps on the selected backend."""

from __future__ import annotations

import math

import torch

from .backends import get_backend
from .model import CRNN


def check_phase_args(
    model: CRNN, x: torch.Tensor, beta: float, steps: int, targets: torch.Tensor | None
) -> None:
    """Validate the arguments of a phase, with errors that say what is wrong."""
    model.check_input(x)
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative int, got {steps!r}")
    if not math.isfinite(beta):
        raise ValueError(f"beta must be finite, got {beta}")
    if beta != 0.0 and targets is None:
        raise ValueError("a nudged phase (beta != 0) needs targets")
    if targets is not None:
        model.check_targets(targets, x.shape[0])


def settle(
    model: CRNN,
    x: torch.Tensor,
    state: list[torch.Tensor],
    beta: float,
    steps: int,
    targets: torch.Tensor | None = None,
    *,
    backend: str | None = None,
) -> list[torch.Tensor]:
    """Run ``steps`` synchronous steps of ``s ← ρ(∂Φ_β/∂s)`` from ``state``, in place.

    Args:
        model: the CRNN.
        x: ``(batch, *model.input_shape)``, clamped input.
        state: one ``(batch, *model.state_shapes[i])`` tensor per state layer; updated in place.
        beta: nudging strength (0 for the free phase).
        steps: number of steps.
        targets: ``(batch,)`` class ids; needed when ``beta != 0``.
        backend: ``"reference"``, ``"torch"``, ``"cpp"``; default ``$EQKERN_BACKEND`` or the fastest.
    Returns:
        ``state`` (the same tensors).
    """
    beta = float(beta)
    check_phase_args(model, x, beta, steps, targets)
    model.check_state(state, x.shape[0])
    return get_backend(backend, x.device, model).settle(model, x, state, beta, steps, targets)
