"""The Anderson solver of a phase (``solver="anderson"``) against the plain iteration.

* it reaches the plain iteration's fixed point (fp64, to 1e-10 at tol 1e-13) on every backend,
  free and nudged, in fewer steps (from the same start: a random state init is seeded alike);
* EP gradients with it equal those of long plain phases; the GDU against BPTT is unchanged
  within 1e-3 cosine;
* it reads the device once per convergence check and never otherwise;
* the stop, the cap and the errors behave as for the plain iteration.
"""

from __future__ import annotations

import math

import pytest
import torch

from cases import CASES
from conftest import rel_rms
from eqkern import check_gdu, ep_gradients, settle
from eqkern.backends import get_backend
from eqkern.backends.base import PhaseInputs
from eqkern.dynamics.convergence import run_phase
from eqkern.errors import ArgumentError



def start(model, x):
    torch.manual_seed(7)  # a random state init ("uniform") draws the same start for both solvers
    return model.init_state(x.shape[0], like=x)


def largest_change(model, x, state, backend, beta=0.0, y=None) -> float:
    """How far one plain step moves ``state``: 0 at a fixed point."""
    moved = settle(model, x, [s.clone() for s in state], beta, 1, y, backend=backend)
    return max((a - b).abs().max().item() for a, b in zip(moved, state))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
@pytest.mark.parametrize("beta", [0.0, 0.5], ids=["free", "nudged"])
@pytest.mark.slow_in_interpreter
def test_anderson_reaches_the_plain_fixed_point(backend, case, beta):
    model, x, y = case.build(torch.float64)
    targets = y if beta else None
    runs = {}
    for solver in ("plain", "anderson"):
        state, used = settle(model, x, start(model, x), beta, 2000, targets, backend=backend,
                             tol=1e-13, check_every=1, return_steps=True, solver=solver)
        runs[solver] = state, used
    (plain, n_plain), (fast, n_fast) = runs["plain"], runs["anderson"]
    dist = max((a - b).abs().max().item() for a, b in zip(plain, fast))
    residual = largest_change(model, x, fast, backend, beta, targets)
    print(f"{backend} {case.id} beta={beta}: plain {n_plain} steps, anderson {n_fast}, "
          f"distance {dist:.2e}, anderson's residual {residual:.2e}")
    assert all(torch.isfinite(s).all() for s in fast)
    assert residual < 1e-10  # a fixed point of the plain step
    assert dist < 1e-10
    assert n_fast <= n_plain


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
@pytest.mark.parametrize("estimator", ["symmetric", "one_sided"])
def test_ep_gradients_with_anderson_equal_long_plain_phases(case, estimator):
    model, x, y = case.build(torch.float64)
    grads = {}
    for solver, t in (("plain", 3000), ("anderson", 3000)):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(7)  # the same start for both (a random state init)
        res = ep_gradients(model, x, y, beta=0.5, t_free=t, t_nudge=t, estimator=estimator,
                           backend="torch", tol=1e-13, check_every=1, solver=solver)
        grads[solver] = [p.grad.clone() for p in model.parameters()]
        print(f"{case.id} {estimator} {solver}: {res.settle_steps} steps")
    errs = [rel_rms(a, b) for a, b in zip(grads["plain"], grads["anderson"])]
    print(f"{case.id} {estimator}: largest relative error {max(errs):.2e}")
    assert max(errs) < 1e-8


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_gdu_is_unchanged_by_anderson(case):
    model, x, y = case.build(torch.float64)
    torch.manual_seed(7)
    plain = check_gdu(model, x, y, beta=0.05, t_free=200, t_nudge=40, backend="torch",
                      tol=1e-12, check_every=1)
    torch.manual_seed(7)
    fast = check_gdu(model, x, y, beta=0.05, t_free=200, t_nudge=40, backend="torch",
                     tol=1e-12, check_every=1, solver="anderson")
    for a, b in zip(plain, fast):
        print(f"{case.id} {a['name']}: cosine plain {a['cosine']:.6f}, anderson {b['cosine']:.6f}")
        assert math.isfinite(b["cosine"])
        assert abs(a["cosine"] - b["cosine"]) < 1e-3


@pytest.mark.parametrize("check_every", [1, 4])
def test_anderson_reads_the_device_once_per_check(check_every, monkeypatch):
    """Every host read of the phase goes through Tensor.item: count them (run_phase, below the
    argument checks of settle, which read the inputs once)."""
    model, x, y = CASES[0].build(torch.float64)
    reads = []
    item = torch.Tensor.item
    monkeypatch.setattr(torch.Tensor, "item", lambda t: reads.append(1) or item(t))
    be = get_backend("torch", x.device)
    phase = PhaseInputs(x, model.init_state(x.shape[0], like=x), 0.0, 200)
    used = run_phase(be, model, phase, tol=1e-9, check_every=check_every, solver="anderson")
    checks = math.ceil(used / check_every)
    print(f"check_every {check_every}: {used} steps, {checks} checks, {len(reads)} reads")
    assert 0 < used < 200
    assert len(reads) == checks
    reads.clear()
    run_phase(be, model, PhaseInputs(x, model.init_state(x.shape[0], like=x), 0.0, 30),
              solver="anderson")
    assert reads == []  # no tol: no read at all


@pytest.mark.parametrize("cap,check_every", [(23, 10), (5, 10), (9, 1)])
def test_anderson_never_exceeds_the_cap(cap, check_every):
    model, x, y = CASES[2].build(torch.float64)
    _, used = settle(model, x, model.init_state(x.shape[0], like=x), 0.5, cap, y, backend="torch",
                     tol=1e-300, check_every=check_every, return_steps=True, solver="anderson")
    assert used == cap
    _, used = settle(model, x, model.init_state(x.shape[0], like=x), 0.5, 0, y, backend="torch",
                     return_steps=True, solver="anderson")
    assert used == 0


def test_anderson_state_stays_in_the_activation_range():
    """The mixed point is clamped: hard-sigmoid states stay in [0, 1] at every step count."""
    model, x, y = CASES[0].build(torch.float32)
    for steps in (2, 3, 5, 8):
        state = settle(model, x, model.init_state(x.shape[0], like=x), 0.0, steps,
                       backend="torch", solver="anderson")
        assert all(s.min() >= 0.0 and s.max() <= 1.0 for s in state)


def test_unknown_solver_is_named():
    model, x, y = CASES[0].build(torch.float32)
    with pytest.raises(ArgumentError, match=r"solver must be one of 'plain', 'anderson'; "
                                            r"got 'broyden'"):
        settle(model, x, model.init_state(x.shape[0]), 0.0, 3, solver="broyden")
    with pytest.raises(ArgumentError, match="solver must be one of"):
        ep_gradients(model, x, y, beta=0.5, t_free=3, t_nudge=2, solver=None)


def test_activation_ranges_cover_every_activation_and_bound_its_values():
    """The clamp of a mixed point is the activation's own range: every activation has one, and
    its values never leave it."""
    from eqkern.model.activations import ACTIVATION_CODES, ACTIVATION_RANGES, activate

    assert set(ACTIVATION_RANGES) == set(ACTIVATION_CODES)
    u = torch.linspace(-50.0, 50.0, 1001)
    for name, (lo, hi) in ACTIVATION_RANGES.items():
        v = activate(name, u)
        print(f"{name}: values in [{v.min().item():g}, {v.max().item():g}], range ({lo}, {hi})")
        assert lo is None or v.min().item() >= lo
        assert hi is None or v.max().item() <= hi
