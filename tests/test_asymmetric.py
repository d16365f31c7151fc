"""Separate feedback weights (Laborieux §2.4, §3.3, App. D.3, F): dynamics, the VF and KP-VF rules,
the weight angle, the backend guard and argument checks.

Every backend's vector-field dynamics are checked against ``reference`` (autograd of Laborieux's
per-layer functions Φ̃_n); the rules against autograd of the same functions (KP-VF: ∂Φ̃/∂θ at each
phase; VF: ∂/∂θ ⟨F(s*), s^a − s^b⟩ with F = ∂Φ̃/∂s by a double backward), which shares no code
with eqkern.asymmetric.
"""

from __future__ import annotations

import os

import pytest
import torch

import cases
from cases import CASES, STATE_TOL, check_states_match
from conftest import rel_rms, require_backend, require_triton
from eqkern import CRNN, Conv, Linear, ep_gradients, settle, weight_angles
from eqkern.asymmetric import feedback_update
from eqkern.backends import analytic, get_backend, reference
from eqkern.backends.common import Phase
from eqkern.datasets import load_dataset

# Conv with and without pool, odd sizes, batch 1, FC only, MSE, FRE-RNN scales (the dynamics only).
DYN_CASES = [c for c in CASES if c.id != "activations-scales-uniform"] + [CASES[5]]
RULE_CASES = [CASES[0], CASES[1], CASES[2], CASES[3]]


def build(case, dtype, feedback="separate", seed=0):
    """``case``'s model with ``feedback``; the same seed gives the same W, b, read-out (B after)."""
    torch.manual_seed(seed)
    model = CRNN(case.input_shape, case.layers, case.num_classes, case.readout,
                 feedback=feedback, **case.kwargs).to(dtype)
    gen = torch.Generator().manual_seed(seed + 1)
    x = (torch.rand(case.batch, *case.input_shape, generator=gen) * 2 - 0.5).to(dtype)
    y = torch.randint(0, case.num_classes, (case.batch,), generator=gen)
    return model, x, y


def copy_feedback(model):
    with torch.no_grad():
        for i in range(1, model.num_layers):
            model.feedback_weight(i).copy_(model.connections[i].weight)
    return model


def grads(model, x, y, backend, **kw):
    torch.manual_seed(7)
    model.zero_grad(set_to_none=True)
    ep_gradients(model, x, y, beta=cases.BETA, t_free=cases.T_FREE, t_nudge=cases.T_NUDGE,
                 backend=backend, **kw)
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
