"""FRE-RNN on CPU: a skip-linked MLP (Liu & Chen's residual topology), a free phase and a training
iteration (contrastive EP, ``rule="ep"``, and the ``rule="fre"`` update), ``torch`` and ``cpp`` next to ``reference`` in the
same run. Small sizes: ``pytest bench/bench_fre.py --benchmark-disable`` runs it as a smoke test.
"""

from __future__ import annotations

import pytest
import torch

from conftest import record_env, require_provider
from eqkern import CRNN, Linear, ep_gradients, settle
from eqkern.model.skips import residual_skips

PROVIDERS = ["reference", "torch", "cpp"]
T_FREE, T_NUDGE = 20, 10


def skip_mlp(depth: int, width: int, batch: int) -> tuple[CRNN, torch.Tensor, torch.Tensor]:
    """``depth`` tanh layers of ``width`` units, γ = 0.1, residual links every 3 layers, MNIST-shaped."""
    layers = [Linear(width, activation="tanh", gamma=0.1 if k < depth - 1 else 1.0)
              for k in range(depth)]
    model = CRNN((784,), layers, 10, skips=residual_skips(depth, 3))
    return model, torch.randn(batch, 784), torch.randint(0, 10, (batch,))


FRE_SIZES = {"mlp10res-64-b64": (10, 64, 64), "mlp20res-64-b32": (20, 64, 32)}


@pytest.fixture(params=list(FRE_SIZES))
def fre_size(request):
    return request.param, skip_mlp(*FRE_SIZES[request.param])


@pytest.mark.parametrize("provider", PROVIDERS)
def test_free_phase_skips(benchmark, provider, fre_size):
    require_provider(provider)
    name, (model, x, _) = fre_size
    benchmark.group = f"fre-free-phase-{name}"
    benchmark.extra_info["steps"] = T_FREE
    record_env(benchmark)

    def run():
        state = model.init_state(x.shape[0])
        settle(model, x, state, 0.0, T_FREE, backend=provider)
        return state

    state = benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    assert all(torch.isfinite(s).all() for s in state)


@pytest.mark.parametrize("rule", ["ep", "fre"])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_training_iteration_skips(benchmark, provider, rule, fre_size):
    """One-sided EP (free phase, one nudged phase) and the update of every parameter."""
    require_provider(provider)
    name, (model, x, y) = fre_size
    benchmark.group = f"fre-iteration-{name}-{rule}"
    benchmark.extra_info.update(t_free=T_FREE, t_nudge=T_NUDGE, rule=rule)
    record_env(benchmark)

    def run():
        model.zero_grad(set_to_none=True)
        ep_gradients(model, x, y, beta=0.1, t_free=T_FREE, t_nudge=T_NUDGE,
                     estimator="one_sided", rule=rule, backend=provider)

    benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
