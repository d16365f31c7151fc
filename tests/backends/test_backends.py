"""Every backend against ``reference`` (autograd of Φ_β): states after whole phases and gradients."""

from __future__ import annotations

import pytest
import torch

from cases import CASES, check_grads_match, check_states_match
from eqkern import ep_gradients


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
@pytest.mark.vs_reference
@pytest.mark.slow_in_interpreter
def test_states_match_reference(backend, case, dtype):
    check_states_match(case.build(dtype), backend, f"{backend} {case.id} {dtype}")


@pytest.mark.parametrize("estimator", ["symmetric", "one_sided"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
@pytest.mark.vs_reference
@pytest.mark.slow_in_interpreter
def test_gradients_match_reference(backend, case, dtype, estimator):
    """Gradients of the whole three-phase (or two-phase) estimate (bounds: see cases.py)."""
    check_grads_match(case.build(dtype), backend, estimator, f"{backend} {case.id} {dtype}")


@pytest.mark.slow_in_interpreter
def test_random_sign_uses_both_signs(backend):
    model, x, y = CASES[0].build(torch.float64)
    gen = torch.Generator().manual_seed(0)
    signs = {ep_gradients(model, x, y, beta=0.3, t_free=3, t_nudge=2, estimator="random_sign",
                          backend=backend, generator=gen).beta for _ in range(12)}
    assert signs == {0.3, -0.3}
