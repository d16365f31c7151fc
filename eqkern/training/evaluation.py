"""Test-set evaluation and the finiteness check of the weights."""

from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from eqkern.errors import DivergenceError
from eqkern.data.datasets import iterate_batches
from eqkern.dynamics.convergence import DEFAULT_CHECK_EVERY
from eqkern.dynamics.settle import free_phase
from eqkern.model import energy
from eqkern.model.crnn import CRNN

__all__ = ["evaluate", "evaluate_batches", "evaluate_classifier", "evaluate_classifier_batches",
           "as_rates", "check_finite"]


Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


@torch.no_grad()
def evaluate(
    model: CRNN, x: torch.Tensor, y: torch.Tensor, *, t_free: int, batch_size: int = 500,
    backend: str | None = None, schedule: str = "synchronous", tol: float | None = None,
    check_every: int = DEFAULT_CHECK_EVERY, solver: str = "plain",
) -> tuple[float, float]:
    """(accuracy in %, mean loss) of the free-phase equilibrium on ``x: (N, ...)``, ``y: (N,)``
    (``schedule``, ``tol``, ``check_every``, ``solver``: as in :func:`eqkern.free_phase`)."""
    sums = evaluate_batches(model, iterate_batches(x, y, batch_size, shuffle=False),
                            t_free=t_free, backend=backend, schedule=schedule, tol=tol,
                            check_every=check_every, solver=solver)
    return as_rates(*sums)


@torch.no_grad()
def evaluate_batches(model: CRNN, batches: Batches, *, t_free: int, backend: str | None = None,
                     schedule: str = "synchronous", tol: float | None = None,
                     check_every: int = DEFAULT_CHECK_EVERY, solver: str = "plain") -> tuple[int, float, int]:
    """(correct, summed loss, examples) of the free-phase equilibrium over ``batches`` of
    ``(x: (B, ...), y: (B,))``: sums, so that shares of a test set (ranks) add up."""
    correct, loss, n = 0, 0.0, 0
    for xb, yb in batches:
        state = free_phase(model, xb, t_free, backend=backend, schedule=schedule, tol=tol,
                           check_every=check_every, solver=solver)
        correct += (model.predict(state) == yb).sum().item()
        loss += energy.loss(model, state[-1], yb).item()
        n += len(yb)
    return correct, loss, n


@torch.no_grad()
def evaluate_classifier(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                        batch_size: int = 500) -> tuple[float, float]:
    """(accuracy in %, mean cross-entropy) of a feed-forward classifier, in eval mode."""
    return as_rates(*evaluate_classifier_batches(model, iterate_batches(x, y, batch_size,
                                                                        shuffle=False)))


@torch.no_grad()
def evaluate_classifier_batches(model: nn.Module, batches: Batches, *,
                                forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
                                ) -> tuple[int, float, int]:
    """(correct, summed cross-entropy, examples) of a feed-forward classifier over ``batches``,
    in eval mode (left in it); ``forward(x) -> logits`` instead of ``model(x)`` if given."""
    model.eval()
    forward = model if forward is None else forward
    correct, loss, n = 0, 0.0, 0
    for xb, yb in batches:
        logits = forward(xb)
        correct += (logits.argmax(1) == yb).sum().item()
        loss += F.cross_entropy(logits, yb, reduction="sum").item()
        n += len(yb)
    return correct, loss, n


def as_rates(correct: float, loss_sum: float, n: float) -> tuple[float, float]:
    """(accuracy in %, mean loss) from sums; (0, 0) for no examples."""
    n = max(1, n)
    return 100.0 * correct / n, loss_sum / n


def check_finite(model: nn.Module, where: str) -> None:
    """Stop training with a message naming the parameter when a weight became NaN/inf."""
    for name, p in model.named_parameters():
        if not torch.isfinite(p).all():
            raise DivergenceError(f"training diverged: {name} is not finite after {where}")
