"""The EP learning rule: three-phase symmetric, one-sided and random-sign estimates.

:func:`ep_gradients` runs the phases on the selected backend, asks it for the Hebbian gradients
(a dict keyed by parameter), lets the rule edit them (FRE-RNN replaces them, the separate-feedback
rules replace ``W_l``'s and add ``B_l``'s, all through the same backend) and writes them into
``.grad`` once, by :func:`eqkern.backends.base.accumulate_grads`, which leaves parameters with
``requires_grad=False`` alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from eqkern.errors import ArgumentError, ArgumentTypeError
from eqkern.model import energy
from eqkern.learning.separate_feedback import feedback_gradients, resolve_rule
from eqkern.model.auxiliary import repeat_targets
from eqkern.model.checks import as_count
from eqkern.backends import get_backend
from eqkern.backends import precision
from eqkern.backends.base import Phase, PhaseInputs, accumulate_grads
from eqkern.dynamics.convergence import DEFAULT_CHECK_EVERY, check_stop_args, run_phase
from eqkern.dynamics.solvers import check_solver
from eqkern.learning.fre import fre_gradients
from eqkern.model.crnn import CRNN
from eqkern.dynamics.settle import check_phase_args
from eqkern.validate import as_bool, describe

Estimator = Literal["symmetric", "one_sided", "random_sign"]
ESTIMATORS = ("symmetric", "one_sided", "random_sign")


def scalar(t: torch.Tensor) -> float:
    """``t.item()``, or NaN for a meta tensor (memory profiles run the step on meta tensors)."""
    return float("nan") if t.device.type == "meta" else t.item()


@dataclass
class EPResult:
    """What one EP gradient estimate saw.

    free_state: the free-phase equilibrium, one ``(batch, *shape)`` tensor per layer, in the
    model's dtype (a bf16/fp16 model settles in fp32: its free state is rounded once, at the end);
    predictions: ``(batch,)`` classes predicted at it; loss: mean loss at it;
    beta: the nudging strength used (its sign is random for ``random_sign``);
    free_steps / nudge_steps: the steps the free phase and the nudged phase(s) ran (the caps
    ``t_free`` / ``t_nudge`` without a ``tol``; for two sequential nudged phases, the larger);
    settle_steps: every step run, all phases summed (a batched ±β pair counts as two phases, as
    when they run one after the other).
    """

    free_state: list[torch.Tensor]
    predictions: torch.Tensor
    loss: float
    beta: float
    free_steps: int = 0
    nudge_steps: int = 0
    settle_steps: int = 0


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
    rule: str | None = None,
    leakage: float = 0.0,
    schedule: str = "synchronous",
    tol: float | None = None,
    check_every: int = DEFAULT_CHECK_EVERY,
    batched_nudge: bool = False,
    cuda_graph: bool = False,
    solver: str = "plain",
) -> EPResult:
    """Estimate the loss gradient by EP and **add** it to every parameter's ``.grad``.

    Free phase of ``t_free`` steps from ``model.init_state``, then ``t_nudge`` steps at ``+β``
    and (symmetric) ``t_nudge`` at ``−β`` from the free equilibrium (Laborieux §3.1):

    * symmetric:   ``g = −[∂Φ_β/∂θ(s^β) − ∂Φ_{−β}/∂θ(s^{−β})] / (2β)``
    * one_sided:   ``g = −[∂Φ_β/∂θ(s^β) − ∂Φ/∂θ(s*)] / β``
    * random_sign: one-sided with ``β ← ±β`` drawn from ``generator``.

    ``schedule``: ``"synchronous"`` or ``"alternating"`` (:func:`eqkern.settle`), every phase.
    ``tol``: stop each phase (free and nudged) once a step changes no state by ``tol`` or more,
    checked every ``check_every`` steps; ``t_free`` and ``t_nudge`` are then caps.
    ``batched_nudge`` (symmetric only; the other estimators have one nudged phase): run the
    ``+β`` and ``−β`` phases as one batch of ``2·batch`` with a per-sample β, one set of backend
    calls for both; with ``tol`` the
    pair stops when neither half moves by ``tol`` any more.
    ``cuda_graph``: run each phase as a replayed CUDA graph where possible (:func:`eqkern.settle`;
    the same gradients). ``solver``: ``"plain"`` or ``"anderson"``, every phase
    (:func:`eqkern.settle`).
    ``rule="fre"`` replaces the contrastive update by FRE-RNN's ``ΔW_i = ds_{i+1} (s_i^0)ᵀ``
    (no ``1/β``, read-out at the free state; :mod:`eqkern.learning.fre`) on the same phases.
    Every rule runs on the selected backend (``backend``; see :func:`eqkern.settle`).

    ``x: (batch, *model.input_shape)`` (finite), ``y: (batch,)`` class ids of any integer dtype;
    ``beta``: a number with ``0 < |beta| <= 1e4`` (:data:`eqkern.model.checks.BETA_MAX`);
    ``t_free``, ``t_nudge``: ints ``>= 0`` (numpy ints too). Call ``optimizer.zero_grad()``
    first, as before ``backward()``; ``g`` is a descent direction, so any ``torch.optim`` works.
    A parameter with ``requires_grad=False`` gets no gradient (its ``.grad`` is left as it is).

    Mixed precision: for a model stored in bfloat16 or float16 (``model.to(torch.bfloat16)``,
    ``x`` in that dtype) every phase, the contrastive estimate and its ``1/β`` are computed in
    float32 from float32 copies of the weights (one cast per call), and only the gradient written
    to ``.grad`` is in the parameters' dtype (:mod:`eqkern.backends.precision`; the same for
    ``rule="fre"`` and the separate-feedback rules). ``loss`` is the fp32 value; ``predictions``
    are int64 class ids. ``torch.autocast`` is refused with an ArgumentError that says this.

    Separate feedback weights (``CRNN(feedback="separate")``, :mod:`eqkern.learning.separate_feedback`): ``rule``
    is ``"kp-vf"`` (the default for such a model: ``W_l`` and ``B_l`` get the same update, Laborieux
    eq. 43), ``"vf"`` (eq. 42) or ``"ep"`` (``B_l`` fixed); ``leakage`` ``λ ≥ 0`` adds ``λ·W_l`` and
    (unless fixed) ``λ·B_l`` to their gradients (= SGD weight decay on them). A symmetric model takes only
    ``rule="ep"`` (its default) and ``leakage=0``.
    """
    if estimator not in ESTIMATORS:
        raise ArgumentError(f"unknown estimator {estimator!r}; known: {ESTIMATORS}")
    t_free, t_nudge = as_count("t_free", t_free), as_count("t_nudge", t_nudge)
    if isinstance(beta, torch.Tensor) and beta.dim() > 0:
        raise ArgumentTypeError(f"beta must be a number (ep_gradients makes the per-sample betas "
                                f"itself), got {describe(beta)}")
    beta, y = check_phase_args(model, x, beta, y)
    if beta == 0.0:
        raise ArgumentError(f"the {estimator} EP estimate divides by beta: it needs beta != 0")
    rule = resolve_rule(model, rule, leakage)
    tol, check_every = check_stop_args(tol, check_every)
    batched_nudge = as_bool("batched_nudge", batched_nudge)
    cuda_graph = as_bool("cuda_graph", cuda_graph)
    solver = check_solver(solver)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ArgumentTypeError(f"generator must be a torch.Generator or None, got {describe(generator)}")
    batched = batched_nudge and estimator == "symmetric"
    be = get_backend(backend, x.device, model, schedule=schedule)
    batch = x.shape[0]
    nominal = beta
    if estimator == "random_sign":
        sign = torch.randint(0, 2, (), generator=generator).item() * 2 - 1
        beta = beta * sign

    def phase(inputs, state, b, steps, targets) -> int:
        return run_phase(be, model, PhaseInputs(inputs, state, b, steps, targets, schedule),
                         tol=tol, check_every=check_every, cuda_graph=cuda_graph, solver=solver)

    storage = x.dtype  # = the parameters' (checked)
    # bf16/fp16 models: phases, estimate and loss in fp32 from one upcast of the weights, input
    # and teacher features (eqkern.backends.precision); the gradients are rounded when written.
    with torch.no_grad(), precision.compute_in(model) as dtype:
        x, y = x.to(dtype), precision.upcast_targets(y, dtype)
        state = model.init_state(batch, like=x)
        free_steps = phase(x, state, 0.0, t_free, None)
        free = [s.clone() for s in state]
        if batched:
            plus, minus, nudge_steps = _batched_nudge(phase, x, y, free, beta, t_nudge)
            other, total = Phase(minus, -beta), free_steps + 2 * nudge_steps
        else:
            plus = [s.clone() for s in free]
            nudge_steps = phase(x, plus, beta, t_nudge, y)
            total = free_steps + nudge_steps
            if estimator == "symmetric":
                minus = [s.clone() for s in free]
                minus_steps = phase(x, minus, -beta, t_nudge, y)
                other, total = Phase(minus, -beta), total + minus_steps
                nudge_steps = max(nudge_steps, minus_steps)
            else:
                other = Phase(free, 0.0)
        if rule == "fre":
            grads = fre_gradients(be, model, x, y, free, Phase(plus, beta), other, nominal)
        else:
            grads = be.hebbian_gradients(model, x, y, Phase(plus, beta), other)
            if model.separate_feedback:
                feedback_gradients(be, model, grads, Phase(plus, beta), other, free, rule=rule,
                                   leakage=float(leakage))
        loss = scalar(energy.loss(model, free[-1], y)) / batch
        predictions = model.predict(free)
    accumulate_grads(grads)  # after the block: the parameters hold their own dtype again
    free = [s.to(storage) for s in free]  # rounded to the model's dtype
    return EPResult(free, predictions, loss, beta, free_steps, nudge_steps, total)


def _batched_nudge(phase, x, y, free, beta: float, t_nudge: int):
    """The ``+β`` and ``−β`` phases from ``free`` as one batch ``[+β samples, −β samples]``;
    returns ``(plus, minus, steps)`` with the states split back into the two phases."""
    batch = x.shape[0]
    state = [torch.cat([s, s]) for s in free]
    betas = torch.cat([x.new_full((batch,), beta), x.new_full((batch,), -beta)])
    steps = phase(torch.cat([x, x]), state, betas, t_nudge, repeat_targets(y, 2))
    return [s[:batch] for s in state], [s[batch:] for s in state], steps
