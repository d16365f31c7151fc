"""The feed-forward pass of a CRNN's architecture (``method="bp"``'s network) against one written
here with torch.nn layers and the activations' formulas, and its BP training step's gradients
against autograd of that independent network."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cases import CASES
from eqkern import Conv, CRNN, Linear
from eqkern.errors import ArgumentError
from eqkern.model.feedforward import feedforward_logits, feedforward_states
from eqkern.training.presets import get_preset
from eqkern.training.steps import make_step

# The activations' formulas, written again (not eqkern's functions).
FORMULAS = {
    "hard_sigmoid": lambda u: torch.clamp(0.5 * u, 0.0, 1.0),
    "clamp01": lambda u: torch.clamp(u, 0.0, 1.0),
    "hard_sigmoid_courbariaux": lambda u: torch.clamp(0.5 * (u + 1.0), 0.0, 1.0),
    "relu": lambda u: torch.maximum(u, torch.zeros_like(u)),
    "tanh": lambda u: torch.tanh(u),
}


def independent_forward(model: CRNN, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    states, h = [], x
    for spec, conn in zip(model.specs, model.connections):
        if isinstance(spec, Conv):
            h = F.conv2d(h, conn.weight, conn.bias, padding=spec.padding)
            h = F.max_pool2d(h, 2) if spec.pool else h
        else:
            h = h.reshape(h.shape[0], -1) @ conn.weight.t() + conn.bias
        h = FORMULAS[spec.activation](spec.alpha * h)
        states.append(h)
    logits = h if model.out is None else h.reshape(h.shape[0], -1) @ model.out.weight.t() + model.out.bias
    return states, logits


def _plain_cases(ce_only=False):
    models = [(c, c.build(torch.float64)[0]) for c in CASES]
    return [c for c, m in models if not m.skips and (m.out is not None or not ce_only)]


@pytest.mark.parametrize("case", _plain_cases(), ids=lambda c: c.id)
def test_feedforward_equals_an_independent_network(case):
    model, x, _ = case.build(torch.float64)
    states = feedforward_states(model, x)
    want_states, want_logits = independent_forward(model, x)
    logits = feedforward_logits(model, x)
    errs = [(s - w).abs().max().item() for s, w in zip(states, want_states)]
    err = (logits - want_logits).abs().max().item()
    print(f"{case.id}: max |state - independent| per layer {errs}, logits {err:.2e}")
    assert [tuple(s.shape[1:]) for s in states] == list(model.state_shapes)
    assert torch.isfinite(logits).all()
    assert max(errs) < 1e-12 and err < 1e-12


@pytest.mark.parametrize("case", _plain_cases(ce_only=True)[:3], ids=lambda c: c.id)
def test_bp_step_gradients_equal_autograd_of_the_independent_network(case):
    model, x, y = case.build(torch.float64)
    step = make_step(get_preset("demo-mnist", method="bp"))
    model.zero_grad(set_to_none=True)
    res = step(model, x, y)
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    _, logits = independent_forward(model, x)
    F.cross_entropy(logits, y).backward()
    want = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert set(got) == set(want) and got
    errs = {n: (got[n] - want[n]).abs().max().item() for n in want}
    print(f"{case.id}: max |grad - autograd| {max(errs.values()):.2e}; loss {res.loss:.4f}")
    assert max(errs.values()) < 1e-12
    assert res.free_state is not None and len(res.free_state) == model.num_layers
    assert res.settle_steps == 0


def test_feedforward_refuses_skip_links():
    model = CRNN((6,), [Linear(5), Linear(5), Linear(5)], 3, skips=[(0, 2)])
    with pytest.raises(ArgumentError, match="skip links"):
        feedforward_states(model, torch.randn(2, 6))
