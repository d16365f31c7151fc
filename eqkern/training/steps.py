"""The swappable training step of :func:`eqkern.training.engine.fit`: one batch's gradients.

A step adds its gradient estimate to the ``.grad`` of the parameters (the engine zeroes them
before and runs the optimizer after) and evaluates the model the same way it trains it
(``evaluate(model, batches)``: correct, summed loss and examples over ``(x, y)`` batches):

* :class:`EPStep`: ``ep_gradients`` with the config's β, phases, estimator, rule, leakage,
  schedule, convergence stop, batched nudge and backend;
* :class:`BPTTStep`: ``bptt_gradients`` through ``t_free`` steps (the last ``truncate``; the
  steps before them stop at the config's convergence check);
* :class:`BackpropStep`: cross-entropy of the logits and ``loss.backward()``: of ``model(x)``
  for a feed-forward ``nn.Module`` (the BP teacher VGG), of the feed-forward pass of a CRNN's
  architecture (:mod:`eqkern.model.feedforward`: same convolutions, pools, activations and
  read-out, no feedback) for a CRNN, the backprop ceiling of EP on the same network.

:func:`make_step` picks one by ``cfg.method`` (``"ep"`` | ``"bptt"`` | ``"bp"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from eqkern.errors import ArgumentError
from eqkern.learning.bptt import bptt_gradients
from eqkern.learning.ep import ep_gradients
from eqkern.model.crnn import CRNN
from eqkern.model.feedforward import feedforward_logits, feedforward_states
from eqkern.training.evaluation import evaluate_batches, evaluate_classifier_batches

__all__ = ["StepResult", "EPStep", "BPTTStep", "BackpropStep", "make_step"]


@dataclass
class StepResult:
    """predictions ``(batch,)``, mean loss, settle steps run, the free state (for BP: the
    feed-forward states of a CRNN, None for another module)."""

    predictions: torch.Tensor
    loss: float
    settle_steps: int = 0
    free_state: list[torch.Tensor] | None = None


class _CRNNStep:
    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg

    def evaluate(self, model, batches) -> tuple[int, float, int]:
        c = self.cfg
        return evaluate_batches(model, batches, t_free=c.t_free, backend=c.backend,
                                schedule=c.schedule, tol=c.tol, check_every=c.check_every,
                                solver=c.solver)


class EPStep(_CRNNStep):
    def __call__(self, model, x, targets, generator=None) -> StepResult:
        c = self.cfg
        res = ep_gradients(model, x, targets, beta=c.beta, t_free=c.t_free, t_nudge=c.t_nudge,
                           estimator=c.estimator, backend=c.backend, generator=generator,
                           rule=c.rule, leakage=c.leakage, schedule=c.schedule, tol=c.tol,
                           check_every=c.check_every, batched_nudge=c.batched_nudge,
                           solver=c.solver)
        return StepResult(res.predictions, res.loss, res.settle_steps, res.free_state)


class BPTTStep(_CRNNStep):
    def __call__(self, model, x, targets, generator=None) -> StepResult:
        c = self.cfg
        # The steps before the graph on the run's backend (any: they need no graph), stopped
        # at the run's convergence check as EP's free phase is.
        res = bptt_gradients(model, x, targets, t_free=c.t_free, truncate=c.truncate,
                             schedule=c.schedule, tol=c.tol, check_every=c.check_every,
                             prefix_backend=c.backend)
        return StepResult(res.predictions, res.loss, res.steps, res.final_state)


class BackpropStep:
    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg

    def __call__(self, model, x, targets, generator=None) -> StepResult:
        with torch.enable_grad():
            if isinstance(model, CRNN):  # its states, for the engine's per-layer |state|
                states = feedforward_states(model, x)
                logits = model.logits(states[-1])
            else:
                states, logits = None, model(x)
            loss = F.cross_entropy(logits, targets)
            loss.backward()
        free = None if states is None else [s.detach() for s in states]
        return StepResult(logits.detach().argmax(1), loss.item(), 0, free)

    def evaluate(self, model, batches) -> tuple[int, float, int]:
        forward = (lambda x: feedforward_logits(model, x)) if isinstance(model, CRNN) else None
        try:
            return evaluate_classifier_batches(model, batches, forward=forward)
        finally:
            model.train()


def make_step(cfg: Any):
    method = cfg.method
    steps = {"ep": EPStep, "bptt": BPTTStep, "bp": BackpropStep}
    if method not in steps:
        raise ArgumentError(f"method must be 'ep', 'bptt' or 'bp', got {method!r}")
    return steps[method](cfg)
