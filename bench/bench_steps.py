"""Fewer settling steps, providers side by side per size (bench/conftest.py SIZES): a free phase
synchronous vs alternating vs with the convergence stop (plain or Anderson), a nudged phase from a
free equilibrium to the stop (plain vs Anderson), and one EP iteration with the ±β phases one
after the other vs as one batch of 2B.

``reference`` runs each variant too: it is the baseline of its group, as in bench_settle.py. The
backends without the alternating schedule or a per-sample β (cpp) are not providers here.
"""

from __future__ import annotations

import pytest
import torch

from conftest import record_env, require_provider
from eqkern import ep_gradients, settle

# triton needs a GPU to be fast (on CPU it runs in the interpreter): only the CPU providers here.
PROVIDERS = ["reference", "torch", "cpp"]
NUDGE_PROVIDERS = PROVIDERS

# A free phase from the zero state: at most FREE_CAP steps; the stop checks every CHECK_EVERY
# steps against TOL (a network at init settles within a few tens of steps to 1e-4).
FREE_CAP, TOL, CHECK_EVERY = 30, 1e-4, 5
VARIANTS = {
    "synchronous": {},
    "alternating": {"schedule": "alternating"},
    "synchronous-stop": {"tol": TOL, "check_every": CHECK_EVERY},
    "alternating-stop": {"schedule": "alternating", "tol": TOL, "check_every": CHECK_EVERY},
    "synchronous-anderson-stop": {"tol": TOL, "check_every": CHECK_EVERY, "solver": "anderson"},
}
SOLVERS = ["plain", "anderson"]


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("provider", PROVIDERS)
def test_free_phase_schedules(benchmark, provider, variant, size):
    """A whole free phase (cap FREE_CAP steps), timed per phase; extra_info["steps_used"] is the
    number of steps it ran (not "steps", which report.py would divide the time by)."""
    require_provider(provider)
    name, (model, x, y) = size
    benchmark.group = f"free-phase-{variant}-{name}"  # one (op, size) per group, as report.py reads
    record_env(benchmark)
    kw = VARIANTS[variant]

    def run():
        return settle(model, x, model.init_state(x.shape[0]), 0.0, FREE_CAP, backend=provider,
                      return_steps=True, **kw)

    state, used = benchmark.pedantic(run, rounds=2, warmup_rounds=0)
    benchmark.extra_info.update(steps_used=used, cap=FREE_CAP, **kw)
    assert 0 < used <= FREE_CAP
    assert all(torch.isfinite(s).all() for s in state)


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_nudged_phase_solvers(benchmark, provider, solver, size):
    """A nudged phase (β = 0.5, cap FREE_CAP) from the free state of FREE_CAP steps, stopped at
    TOL: where the Anderson solver saves the most steps (extra_info["steps_used"])."""
    require_provider(provider)
    name, (model, x, y) = size
    benchmark.group = f"nudged-phase-{solver}-stop-{name}"
    record_env(benchmark)
    free = settle(model, x, model.init_state(x.shape[0]), 0.0, FREE_CAP, backend="torch")

    def run():
        return settle(model, x, [s.clone() for s in free], 0.5, FREE_CAP, y, backend=provider,
                      tol=TOL, check_every=1, return_steps=True, solver=solver)

    state, used = benchmark.pedantic(run, rounds=2, warmup_rounds=0)
    benchmark.extra_info.update(steps_used=used, cap=FREE_CAP, solver=solver)
    assert 0 < used <= FREE_CAP
    assert all(torch.isfinite(s).all() for s in state)


ITER_T_FREE, ITER_T_NUDGE = 10, 3


@pytest.mark.parametrize("nudge", ["sequential", "batched"])
@pytest.mark.parametrize("provider", NUDGE_PROVIDERS)
def test_ep_iteration_nudge(benchmark, provider, nudge, size):
    """One EP gradient (free + ±β phases + update) with the ±β phases sequential or batched."""
    require_provider(provider)
    name, (model, x, y) = size
    benchmark.group = f"iteration-{nudge}-nudge-{name}"
    benchmark.extra_info.update(t_free=ITER_T_FREE, t_nudge=ITER_T_NUDGE, nudge=nudge)
    record_env(benchmark)

    def run():
        model.zero_grad(set_to_none=True)
        ep_gradients(model, x, y, beta=0.5, t_free=ITER_T_FREE, t_nudge=ITER_T_NUDGE,
                     backend=provider, batched_nudge=nudge == "batched")

    benchmark.pedantic(run, rounds=2, warmup_rounds=0)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
