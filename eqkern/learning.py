"""The EP learning rule: three-phase symmetric, one-sided and random-sign estimates (SPEC §2)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from .backends import get_backend
from .backends.common import Phase
from .fre import fre_update
from .model import CRNN
from .settle import check_phase_args

Estimator = Literal["symmetric", "one_sided", "random_sign"]
ESTIMATORS = ("symmetric", "one_sided", "random_sign")
Rule = Literal["contrastive", "fre"]
RULES = ("contrastive", "fre")


def scalar(t: torch.Tensor) -> float:
    """``t.item()``, or NaN for a meta tensor (memory profiles run the step on meta tensors)."""
    return float("nan") if t.device.type == "meta" else t.item()


@dataclass
class EPResult:
    """What one EP gradient estimate saw.

    free_state: the free-phase equilibrium, one ``(batch, *shape)`` tensor per layer;
    predictions: ``(batch,)`` classes predicted at it; loss: mean loss at it;
    beta: the nudging strength used (its sign is random for ``random_sign``).
    """

    free_state: list[torch.Tensor]
    predictions: torch.Tensor
    loss: float
    beta: float


def ep_gradients(
    model: CRNN,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    beta: float,
    t_free: int,
    t_nudge: int,
    estimator: Estimator = "symmetric",
    backend: str | None = None,
    generator: torch.Generator | None = None,
    rule: Rule = "contrastive",
) -> EPResult:
    """Estimate the loss gradient by EP and **add** it to every parameter's ``.grad``.

    Free phase of ``t_free`` steps from ``model.init_state``, then ``t_nudge`` steps at ``+β``
    and (symmetric) ``t_nudge`` at ``−β`` from the free equilibrium (Laborieux §3.1):

    * symmetric:   ``g = −[∂Φ_β/∂θ(s^β) − ∂Φ_{−β}/∂θ(s^{−β})] / (2β)``
    * one_sided:   ``g = −[∂Φ_β/∂θ(s^β) − ∂Φ/∂θ(s*)] / β``
    * random_sign: one-sided with ``β ← ±β`` drawn from ``generator``.

    ``rule="fre"`` replaces this contrastive update by FRE-RNN's ``ΔW_i = ds_{i+1} (s_i^0)ᵀ``
    (no ``1/β``, read-out at the free state; :mod:`eqkern.fre`) on the same phases.

    ``x: (batch, *model.input_shape)``, ``y: (batch,)`` class ids. Call ``optimizer.zero_grad()``
    first, as before ``backward()``; ``g`` is a descent direction, so any ``torch.optim`` works.
    """
    beta = float(beta)
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; known: {ESTIMATORS}")
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; known: {RULES}")
    if rule == "fre" and model.augment is not None:
        raise ValueError("rule='fre' does not support LE/KD augmentation (the paper has none); "
                         "use rule='contrastive'")
    if beta == 0.0:
        raise ValueError(f"the {estimator} EP estimate divides by beta: it needs beta != 0")
    check_phase_args(model, x, beta, max(t_free, t_nudge), y)
    be = get_backend(backend, x.device, model)
    batch = x.shape[0]
    nominal = beta
    if estimator == "random_sign":
        sign = torch.randint(0, 2, (), generator=generator).item() * 2 - 1
        beta = beta * sign

    with torch.no_grad():
        state = model.init_state(batch, like=x)
        be.settle(model, x, state, 0.0, t_free, None)
        free = [s.clone() for s in state]
        plus = be.settle(model, x, [s.clone() for s in free], beta, t_nudge, y)
        if estimator == "symmetric":
            minus = be.settle(model, x, [s.clone() for s in free], -beta, t_nudge, y)
            other = Phase(minus, -beta)
        else:
            other = Phase(free, 0.0)
        if rule == "fre":
            fre_update(model, x, y, free, Phase(plus, beta), other, nominal)
        else:
            be.hebbian_update(model, x, y, Phase(plus, beta), other)
        loss = scalar(model.loss(free[-1], y)) / batch
        predictions = model.predict(free)
    return EPResult(free, predictions, loss, beta)


@torch.no_grad()
def free_phase(
    model: CRNN, x: torch.Tensor, t_free: int, *, backend: str | None = None
) -> list[torch.Tensor]:
    """The free-phase state after ``t_free`` steps from the initial state (inference)."""
    check_phase_args(model, x, 0.0, t_free, None)
    state = model.init_state(x.shape[0], like=x)
    return get_backend(backend, x.device, model).settle(model, x, state, 0.0, t_free, None)
