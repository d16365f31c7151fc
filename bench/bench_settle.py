"""The EP hot loops on CPU, providers side by side per size (bench/conftest.py SIZES): one
settling step, a whole free phase, one Hebbian update, one training iteration (EP vs BPTT)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import PROVIDERS, record_env, require_provider
from eqkern import bptt_gradients, ep_gradients, settle
from eqkern.backends import get_backend
from eqkern.backends.base import Phase, accumulate_grads


# The "conv floor" of one step: the convolutions a step must run and nothing else (the forward conv
# of every layer above the input and the transposed convs; the input conv is computed once per
# phase). "conv-floor" in the layout the reference and torch backends use (NCHW), "conv-floor-cl"
# in the channels-last layout the cpp backend uses on CPU.
FLOOR_PROVIDERS = ["conv-floor", "conv-floor-cl"]
# A whole free phase from the zero state (beta = 0), this many steps.
FREE_STEPS = 6


def conv_floor_step(model, state, channels_last: bool):
    """A function running the convolutions of one settling step of ``model`` from ``state``."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    conv = lambda t: t.contiguous(memory_format=fmt) if t.dim() == 4 else t  # noqa: E731
    st = [conv(s) for s in state]
    ws = [conv(c.weight) for c in model.connections]

    def step():
        for j in range(1, model.num_layers):
            c, spec = model.connections[j], model.specs[j]
            if ws[j].dim() == 4:
                pre = F.conv2d(st[j - 1], ws[j], c.bias, padding=spec.padding)
                F.conv_transpose2d(pre, ws[j], padding=spec.padding)  # its input has pre's shape
            else:
                F.linear(st[j - 1].flatten(1), ws[j], c.bias)
                st[j] @ ws[j]

    return step


def conv_floor_phase(model, x, steps: int, channels_last: bool):
    """A function running the convolutions of a ``steps``-step phase of ``model`` on ``x``: the
    input conv once, then ``steps`` conv floors (from a state settled 3 steps, so that it is not
    trivial)."""
    state = model.init_state(x.shape[0])
    settle(model, x, state, 0.0, 3, backend="torch")
    step = conv_floor_step(model, state, channels_last)
    conn, spec = model.connections[0], model.specs[0]

    def run():
        with torch.no_grad():
            F.conv2d(x, conn.weight, conn.bias, padding=spec.padding)
            for _ in range(steps):
                step()

    return run


# A phase of this many steps is timed: backends that compute the input drive once per phase
# (as training does) amortise it as they would in training; the report divides by it.
PHASE_STEPS = 5


@pytest.mark.parametrize("provider", PROVIDERS)
def test_settle_step(benchmark, provider, size):
    """Synchronous steps of every layer, nudged (the read-out nudge included)."""
    require_provider(provider)
    name, (model, x, y) = size
    benchmark.group = f"settle-step-{name} ({PHASE_STEPS} steps per call)"
    benchmark.extra_info["steps"] = PHASE_STEPS
    record_env(benchmark)
    state = model.init_state(x.shape[0])
    settle(model, x, state, 0.0, 3, backend="torch")  # a non-trivial state to start from

    benchmark.pedantic(settle, args=(model, x, state, 0.5, PHASE_STEPS, y),
                       kwargs={"backend": provider}, rounds=3, warmup_rounds=1)
    assert all(torch.isfinite(s).all() for s in state)


@pytest.mark.parametrize("provider", FLOOR_PROVIDERS)
def test_settle_step_conv_floor(benchmark, provider, size):
    """The convolutions of a PHASE_STEPS-step phase alone, input conv included (the floor of the
    providers above, over the same steps, so the raw group compares like with like)."""
    name, (model, x, y) = size
    benchmark.group = f"settle-step-{name} ({PHASE_STEPS} steps per call)"
    benchmark.extra_info["steps"] = PHASE_STEPS
    record_env(benchmark)
    benchmark.pedantic(conv_floor_phase(model, x, PHASE_STEPS, provider == "conv-floor-cl"),
                       rounds=3, warmup_rounds=1)


@pytest.mark.parametrize("provider", PROVIDERS + FLOOR_PROVIDERS)
def test_free_phase(benchmark, provider, size):
    """A whole free phase of FREE_STEPS steps from the zero state (reported per step)."""
    name, (model, x, y) = size
    benchmark.group = f"free-phase-{name} ({FREE_STEPS} steps per call)"
    benchmark.extra_info["steps"] = FREE_STEPS
    record_env(benchmark)
    if provider in FLOOR_PROVIDERS:  # the floor of a phase: FREE_STEPS conv floors + one input conv
        benchmark.pedantic(conv_floor_phase(model, x, FREE_STEPS, provider == "conv-floor-cl"),
                           rounds=2, warmup_rounds=0)
        return
    require_provider(provider)

    def run():
        settle(model, x, model.init_state(x.shape[0]), 0.0, FREE_STEPS, backend=provider)

    benchmark.pedantic(run, rounds=2, warmup_rounds=0)


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
    hebbian = get_backend(provider, x.device).hebbian_gradients

    def update(*args):
        accumulate_grads(hebbian(*args))

    def run():
        model.zero_grad(set_to_none=True)
        with torch.no_grad():
            update(model, x, y, Phase(plus, 0.5), Phase(minus, -0.5))

    benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


# One training iteration: EP (free phase + two nudged phases + update) on each backend, and BPTT
# through a free phase of the same length, in one group.
ITER_T_FREE, ITER_T_NUDGE = 10, 3


@pytest.mark.parametrize("provider", PROVIDERS + ["bptt"])
def test_training_iteration(benchmark, provider, size):
    """EP's gradient of one batch vs BPTT's (T_free = ITER_T_FREE for both)."""
    name, (model, x, y) = size
    benchmark.group = f"iteration-{name}"
    benchmark.extra_info.update(t_free=ITER_T_FREE, t_nudge=ITER_T_NUDGE)
    record_env(benchmark)
    if provider == "bptt":
        def run():
            model.zero_grad(set_to_none=True)
            bptt_gradients(model, x, y, t_free=ITER_T_FREE)
    else:
        require_provider(provider)

        def run():
            model.zero_grad(set_to_none=True)
            ep_gradients(model, x, y, beta=0.5, t_free=ITER_T_FREE, t_nudge=ITER_T_NUDGE,
                         backend=provider)

    benchmark.pedantic(run, rounds=2, warmup_rounds=0)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
