"""Every backend against ``reference`` (autograd of Φ_β): states after whole phases and gradients."""

from __future__ import annotations

import pytest
import torch

from cases import CASES
from conftest import rel_rms, require_backend
from eqkern import ep_gradients, settle

BACKENDS = ["torch", "cpp"]
STATE_TOL = {torch.float32: 1e-5, torch.float64: 1e-12}
T_FREE, T_NUDGE, BETA = 20, 8, 0.5


def run_phases(model, x, y, backend):
    """Free phase then a +β phase from the same initial state; returns the nudged state."""
    torch.manual_seed(7)  # same U(0,1) initial state for every backend
    state = model.init_state(x.shape[0], like=x)
    settle(model, x, state, 0.0, T_FREE, backend=backend)
    free = [s.clone() for s in state]
    settle(model, x, state, BETA, T_NUDGE, y, backend=backend)
    return free, state


def ep_grads(model, x, y, backend, estimator="symmetric"):
    torch.manual_seed(7)
    model.zero_grad(set_to_none=True)
    ep_gradients(model, x, y, beta=BETA, t_free=T_FREE, t_nudge=T_NUDGE,
                 estimator=estimator, backend=backend)
    return {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
@pytest.mark.parametrize("backend", BACKENDS)
def test_states_match_reference(backend, case, dtype):
    require_backend(backend)
    model, x, y = case.build(dtype)
    ref = run_phases(model, x, y, "reference")
    out = run_phases(model, x, y, backend)
    for phase, r_phase, o_phase in zip(("free", "nudged"), ref, out):
        for i, (r, o) in enumerate(zip(r_phase, o_phase)):
            err = rel_rms(r, o)
            print(f"{backend} {case.id} {dtype} {phase} state[{i}] rel RMS {err:.2e}")
            assert err <= STATE_TOL[dtype]


@pytest.mark.parametrize("estimator", ["symmetric", "one_sided"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_match_reference(backend, case, dtype, estimator):
    """Gradients of the whole three-phase (or two-phase) estimate.

    fp32 gradients are differences of nearly equal terms, so fp32 *reference* is itself off from
    the exact value; the bound is 1e-5 or twice the fp32 reference's own error against fp64
    (flash-attention's rule), whichever is larger. fp64 is held to 1e-10.
    """
    require_backend(backend)
    model, x, y = case.build(dtype)
    ref = ep_grads(model, x, y, "reference", estimator)
    out = ep_grads(model, x, y, backend, estimator)
    exact = ref
    if dtype == torch.float32:
        exact = ep_grads(model.double(), x.double(), y, "reference", estimator)
        model.float()
    for name in ref:
        err = rel_rms(exact[name], out[name])
        ref_err = rel_rms(exact[name], ref[name])
        bound = max(1e-5, 2 * ref_err) if dtype == torch.float32 else 1e-10
        print(f"{backend} {case.id} {dtype} {estimator} {name}: rel RMS {err:.2e} "
              f"(fp32 reference {ref_err:.2e}, bound {bound:.1e})")
        assert err <= bound


@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
def test_random_sign_uses_both_signs(backend):
    require_backend(backend)
    model, x, y = CASES[0].build(torch.float64)
    gen = torch.Generator().manual_seed(0)
    signs = {ep_gradients(model, x, y, beta=0.3, t_free=3, t_nudge=2, estimator="random_sign",
                          backend=backend, generator=gen).beta for _ in range(12)}
    assert signs == {0.3, -0.3}
