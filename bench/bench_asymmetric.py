"""Separate feedback weights (CRNN(feedback="separate"), Laborieux §2.4/§3.3) on CPU, per size
(bench/conftest.py SIZES): a whole free phase and one training iteration of the vector-field model,
next to the symmetric model of the same size in the same run.

Providers: ``reference`` (the separate model, autograd of the per-layer functions Φ̃ each step:
the baseline of the group), ``torch`` (the separate model, analytic backend: one extra forward
conv per pooled layer and step for the feedback pool indices), ``torch-symmetric`` (the symmetric
model, analytic backend: the cost the separate weights add is the gap to ``torch``), ``cpp`` (the
separate model in the C++ loop). Iterations train with KP-VF (``torch``, ``cpp``, ``reference``)
and VF (``torch-vf``).
"""

from __future__ import annotations

import pytest
import torch

from conftest import record_env, require_provider
from eqkern import CRNN, ep_gradients, settle

FREE_STEPS = 6  # as bench_settle.py
ITER_T_FREE, ITER_T_NUDGE = 10, 3

# provider -> (feedback, backend, rule)
PROVIDERS = {
    "reference": ("separate", "reference", "kp-vf"),
    "torch": ("separate", "torch", "kp-vf"),
    "torch-vf": ("separate", "torch", "vf"),
    "torch-symmetric": ("symmetric", "torch", None),
    "cpp": ("separate", "cpp", "kp-vf"),
}


def with_feedback(model: CRNN, feedback: str) -> CRNN:
    """``model``'s architecture and weights with ``feedback`` (separate: B_l freshly drawn)."""
    if feedback == "symmetric":
        return model
    twin = CRNN(model.input_shape, model.specs, model.num_classes, model.readout,
                feedback=feedback)
    twin.load_state_dict(model.state_dict(), strict=False)  # W, b, read-out; B_l stays its own
    return twin


@pytest.mark.parametrize("provider", [p for p in PROVIDERS if p != "torch-vf"])
def test_asym_free_phase(benchmark, provider, size):
    """A free phase of FREE_STEPS steps from the zero state (reported per step)."""
    name, (model, x, y) = size
    feedback, backend, _ = PROVIDERS[provider]
    require_provider(backend)
    model = with_feedback(model, feedback)
    benchmark.group = f"asym-free-phase-{name}"
    benchmark.extra_info.update(steps=FREE_STEPS, feedback=feedback)
    record_env(benchmark)

    def run():
        return settle(model, x, model.init_state(x.shape[0]), 0.0, FREE_STEPS, backend=backend)

    state = benchmark.pedantic(run, rounds=2, warmup_rounds=0)
    assert all(torch.isfinite(s).all() for s in state)


@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_asym_training_iteration(benchmark, provider, size):
    """One EP gradient (free phase + ±β phases + the rule's update) of one batch."""
    name, (model, x, y) = size
    feedback, backend, rule = PROVIDERS[provider]
    require_provider(backend)
    model = with_feedback(model, feedback)
    benchmark.group = f"asym-iteration-{name}"
    benchmark.extra_info.update(t_free=ITER_T_FREE, t_nudge=ITER_T_NUDGE, feedback=feedback,
                                rule=rule or "ep")
    record_env(benchmark)
    leakage = 3e-4 if feedback == "separate" else 0.0  # Laborieux Table 3's weight decay as λ

    def run():
        model.zero_grad(set_to_none=True)
        ep_gradients(model, x, y, beta=0.5, t_free=ITER_T_FREE, t_nudge=ITER_T_NUDGE,
                     backend=backend, rule=rule, leakage=leakage)

    benchmark.pedantic(run, rounds=2, warmup_rounds=0)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
