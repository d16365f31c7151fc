"""Test-set evaluation and the finiteness check of the weights."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from eqkern.errors import DivergenceError
from eqkern.data.datasets import iterate_batches
from eqkern.dynamics.settle import free_phase
from eqkern.model import energy
from eqkern.model.crnn import CRNN

__all__ = ["evaluate", "evaluate_classifier", "check_finite"]


@torch.no_grad()
def evaluate(
    model: CRNN, x: torch.Tensor, y: torch.Tensor, *, t_free: int, batch_size: int = 500,
    backend: str | None = None, schedule: str = "synchronous", tol: float | None = None,
    check_every: int = 10,
) -> tuple[float, float]:
    """(accuracy in %, mean loss) of the free-phase equilibrium on ``x: (N, ...)``, ``y: (N,)``
    (``schedule``, ``tol``, ``check_every``: as in :func:`eqkern.free_phase`)."""
    correct, loss = 0, 0.0
    for xb, yb in iterate_batches(x, y, batch_size, shuffle=False):
        state = free_phase(model, xb, t_free, backend=backend, schedule=schedule, tol=tol,
                           check_every=check_every)
        correct += (model.predict(state) == yb).sum().item()
        loss += energy.loss(model, state[-1], yb).item()
    return 100.0 * correct / len(y), loss / len(y)


@torch.no_grad()
def evaluate_classifier(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                        batch_size: int = 500) -> tuple[float, float]:
    """(accuracy in %, mean cross-entropy) of a feed-forward classifier, in eval mode."""
    model.eval()
    correct, loss = 0, 0.0
    for xb, yb in iterate_batches(x, y, batch_size, shuffle=False):
        logits = model(xb)
        correct += (logits.argmax(1) == yb).sum().item()
        loss += F.cross_entropy(logits, yb, reduction="sum").item()
    n = max(1, len(y))
    return 100.0 * correct / n, loss / n


def check_finite(model: nn.Module, where: str) -> None:
    """Stop training with a message naming the parameter when a weight became NaN/inf."""
    for name, p in model.named_parameters():
        if not torch.isfinite(p).all():
            raise DivergenceError(f"training diverged: {name} is not finite after {where}")
