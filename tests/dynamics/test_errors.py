"""Bad input gets a clear error naming what is wrong."""

from __future__ import annotations

import pytest
import torch

from eqkern import CRNN, Conv, Linear, bptt_gradients, ep_gradients, settle


@pytest.fixture
def setup():
    model = CRNN((1, 8, 8), [Conv(3), Linear(4)], 3)
    x = torch.rand(2, 1, 8, 8)
    y = torch.tensor([0, 2])
    return model, x, y


def test_wrong_input_shape(setup):
    model, _, y = setup
    with pytest.raises(ValueError, match=r"x has shape \(2, 1, 7, 8\)"):
        settle(model, torch.rand(2, 1, 7, 8), model.init_state(2), 0.0, 1, backend="torch")


def test_wrong_input_dtype(setup):
    model, x, _ = setup
    with pytest.raises(TypeError, match="dtype torch.float64"):
        settle(model, x.double(), model.init_state(2), 0.0, 1, backend="torch")


def test_input_on_other_device(setup):
    model, x, _ = setup
    with pytest.raises(ValueError, match="is on meta"):
        settle(model, x.to("meta"), model.init_state(2), 0.0, 1, backend="torch")


def test_wrong_state(setup):
    model, x, _ = setup
    state = model.init_state(3)
    with pytest.raises(ValueError, match=r"state\[0\] has shape"):
        settle(model, x, state, 0.0, 1, backend="torch")
    with pytest.raises(ValueError, match="state has 1 layers"):
        settle(model, x, model.init_state(2)[:1], 0.0, 1, backend="torch")


def test_targets_checked(setup):
    model, x, y = setup
    with pytest.raises(ValueError, match="needs targets"):
        settle(model, x, model.init_state(2), 0.5, 1, backend="torch")
    with pytest.raises(ValueError, match="class ids"):
        settle(model, x, model.init_state(2), 0.5, 1, y.float(), backend="torch")


@pytest.mark.parametrize("estimator", ["symmetric", "one_sided", "random_sign"])
def test_zero_beta_rejected(setup, estimator):
    model, x, y = setup
    with pytest.raises(ValueError, match="needs beta != 0"):
        ep_gradients(model, x, y, beta=0.0, t_free=2, t_nudge=2, estimator=estimator)


def test_unknown_estimator_and_backend(setup):
    model, x, y = setup
    with pytest.raises(ValueError, match="unknown estimator"):
        ep_gradients(model, x, y, beta=0.1, t_free=2, t_nudge=2, estimator="two_sided")
    with pytest.raises(ValueError, match="unknown backend 'cuda_magic'"):
        settle(model, x, model.init_state(2), 0.0, 1, backend="cuda_magic")


def test_triton_on_cpu_needs_the_interpreter(setup, monkeypatch):
    """Without TRITON_INTERPRET=1 the triton backend cannot run on cpu, and says how to fix it."""
    model, x, _ = setup
    # triton reads TRITON_INTERPRET when it is first imported and keeps it: import it with the
    # suite's value first, or the kernels of later tests would be built half for a GPU.
    from eqkern.kernels import native

    native.triton_status()
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="set TRITON_INTERPRET=1 before importing eqkern"):
        settle(model, x, model.init_state(2), 0.0, 1, backend="triton")


def test_env_backend_is_honoured(setup, monkeypatch):
    model, x, _ = setup
    monkeypatch.setenv("EQKERN_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="unknown backend 'nonsense'"):
        settle(model, x, model.init_state(2), 0.0, 1)


def test_bad_model_descriptions():
    with pytest.raises(ValueError, match="unknown activation 'sigmoidish'"):
        CRNN((1, 8, 8), [Conv(3, activation="sigmoidish")], 3)
    with pytest.raises(ValueError, match="empty map"):
        CRNN((1, 4, 4), [Conv(3), Conv(3), Conv(3, padding=0)], 3)
    with pytest.raises(ValueError, match="Conv needs a"):
        CRNN((1, 8, 8), [Linear(5), Conv(3)], 3)
    with pytest.raises(ValueError, match="readout='mse' needs"):
        CRNN((1, 8, 8), [Conv(3), Linear(4)], 3, readout="mse")
    with pytest.raises(ValueError, match="readout must be"):
        CRNN((1, 8, 8), [Conv(3)], 3, readout="hinge")


def test_bptt_truncation_checked(setup):
    model, x, y = setup
    with pytest.raises(ValueError, match="truncate must be"):
        bptt_gradients(model, x, y, t_free=3, truncate=5)
