"""Augmented EP (Lin §3.2) on CPU: a nudged phase with LE nudges on every hidden layer after the
first (as ``vgg7-le-cifar10``), providers side by side per size (bench/conftest.py SIZES)."""

from __future__ import annotations

import pytest
import torch

from conftest import PROVIDERS, record_env, require_provider
from eqkern import CRNN, settle
from eqkern.model.auxiliary import LocalError

NUDGE_STEPS = 5


def with_local_error(model: CRNN) -> CRNN:
    """The same network with LE read-outs on layers 1…N-1 (κ = 0.65, the preset's)."""
    aug = CRNN(model.input_shape, model.specs, model.num_classes,
               augment=LocalError(tuple(range(1, model.num_layers))))
    aug.load_state_dict(model.state_dict(), strict=False)
    aug.kappa = 0.65
    return aug


@pytest.mark.parametrize("provider", PROVIDERS)
def test_le_nudged_phase(benchmark, provider, size):
    """NUDGE_STEPS steps at β = 0.25 of the LE-augmented network (nudges on N-1 layers)."""
    require_provider(provider)
    name, (model, x, y) = size
    model = with_local_error(model)
    benchmark.group = f"le-nudged-phase-{name}"
    benchmark.extra_info["steps"] = NUDGE_STEPS
    record_env(benchmark)
    start = model.init_state(x.shape[0])
    settle(model, x, start, 0.0, 3, backend="torch")
    state = [s.clone() for s in start]

    def run():
        for s, s0 in zip(state, start):
            s.copy_(s0)
        settle(model, x, state, 0.25, NUDGE_STEPS, y, backend=provider)

    benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    assert all(torch.isfinite(s).all() for s in state)
