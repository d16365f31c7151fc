"""One settling step (and one Hebbian update) of Laborieux's VGG-5: reference vs torch vs cpp."""

from __future__ import annotations

import pytest
import torch

from conftest import PROVIDERS, record_env, require_provider
from eqkern import settle
from eqkern.backends import get_backend
from eqkern.backends.common import Phase


# A phase of this many steps is timed: backends that compute the input drive once per phase
# (as training does) amortise it as they would in training; the report divides by it.
PHASE_STEPS = 5


@pytest.mark.parametrize("provider", PROVIDERS)
def test_settle_step(benchmark, provider, size):
    """Synchronous steps of every layer, nudged (the read-out nudge included)."""
    require_provider(provider)
    name, (model, x, y) = size
    benchmark.group = f"settle-step-{name}"
    benchmark.extra_info["steps"] = PHASE_STEPS
    record_env(benchmark)
    state = model.init_state(x.shape[0])
    settle(model, x, state, 0.0, 3, backend="torch")  # a non-trivial state to start from

    benchmark.pedantic(settle, args=(model, x, state, 0.5, PHASE_STEPS, y),
                       kwargs={"backend": provider}, rounds=3, warmup_rounds=1)
    assert all(torch.isfinite(s).all() for s in state)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_hebbian_update(benchmark, provider, size):
    """The symmetric contrastive update of every weight from two nudged states."""
    require_provider(provider)
    name, (model, x, y) = size
    benchmark.group = f"hebbian-update-{name}"
    record_env(benchmark)
    state = model.init_state(x.shape[0])
    settle(model, x, state, 0.0, 3, backend="torch")
    plus = settle(model, x, [s.clone() for s in state], 0.5, 1, y, backend="torch")
    minus = settle(model, x, [s.clone() for s in state], -0.5, 1, y, backend="torch")
    update = get_backend(provider, x.device).hebbian_update

    def run():
        model.zero_grad(set_to_none=True)
        with torch.no_grad():
            update(model, x, y, Phase(plus, 0.5), Phase(minus, -0.5))

    benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
