"""The backend interface: gradients keyed by parameter and written in one place (frozen parameters
get none), the rules that are not ∂Φ (FRE, VF, KP-VF) on the selected backend, the capability
check and its reason, and ``eqkern info`` reporting the registry's probe."""

from __future__ import annotations

import pytest
import torch

from cases import CASES
from conftest import rel_rms
from eqkern import CRNN, Conv, Linear, ep_gradients
from eqkern.backends import BACKENDS, get_backend, unavailable_reason, unsupported_reason
from eqkern.backends.base import Backend

# (id, feedback, rule, estimator): the four ways ep_gradients builds a gradient dict.
RULES = [("symmetric", "symmetric", None, "symmetric"), ("one-sided", "symmetric", None, "one_sided"),
         ("kp-vf", "separate", "kp-vf", "symmetric"), ("vf", "separate", "vf", "symmetric"),
         ("fre", "symmetric", "fre", "one_sided")]
SHORT = dict(beta=0.5, t_free=4, t_nudge=3)


def _model(feedback: str) -> tuple[CRNN, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = CRNN((2, 9, 9), [Conv(3), Conv(4, padding=1), Linear(5)], 4, feedback=feedback).double()
    x = torch.rand(3, 2, 9, 9, dtype=torch.float64)
    y = torch.tensor([0, 3, 1])
    return model, x, y


def _grads(model, x, y, backend, rule, estimator) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(7)
    ep_gradients(model, x, y, estimator=estimator, backend=backend, rule=rule, **SHORT)
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("rid,feedback,rule,estimator", RULES, ids=[r[0] for r in RULES])
def test_frozen_parameter_gets_no_gradient(backend, rid, feedback, rule, estimator):
    """requires_grad=False: no .grad at all (so no optimizer moves it), the others unchanged."""
    model, x, y = _model(feedback)
    want = _grads(model, x, y, backend, rule, estimator)
    frozen = [model.connections[1].weight, model.connections[0].bias, model.out.weight]
    if feedback == "separate":
        frozen.append(model.feedback_weight(2))
    for p in frozen:
        p.requires_grad_(False)
    got = _grads(model, x, y, backend, rule, estimator)
    assert all(p.grad is None for p in frozen)
    names = {id(p): n for n, p in model.named_parameters()}
    assert set(got) == set(want) - {names[id(p)] for p in frozen}
    for name, g in got.items():
        assert torch.equal(g, want[name]), name


@pytest.mark.parametrize("rid,feedback,rule,estimator", [r for r in RULES if r[2]],
                         ids=[r[0] for r in RULES if r[2]])
@pytest.mark.vs_reference
def test_rules_run_on_the_selected_backend(backend, rid, feedback, rule, estimator, monkeypatch):
    """FRE, VF, KP-VF call the selected backend's connection_gradients and equal reference's."""
    model, x, y = _model(feedback)
    want = _grads(model, x, y, "reference", rule, estimator)
    be, calls = BACKENDS[backend], []
    original = type(be).connection_gradients

    def counted(self, *args, **kwargs):
        calls.append(self.name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(be), "connection_gradients", counted)
    got = _grads(model, x, y, backend, rule, estimator)
    assert calls and set(calls) == {backend}, calls
    assert sorted(got) == sorted(want)
    for name in want:
        err = rel_rms(want[name], got[name])
        print(f"{backend} {rid} {name}: rel RMS {err:.2e}")
        assert err <= 1e-10 and want[name].norm() > 0


def test_capability_check_gives_the_reason(monkeypatch):
    monkeypatch.delenv("EQKERN_BACKEND", raising=False)
    model = CRNN((8,), [Linear(5), Linear(4), Linear(3)], 2, skips=[(0, 2)])
    for name in BACKENDS:
        reason = unsupported_reason(name, model, schedule="alternating")
        print(f"{name}: {reason}")
        if name in ("torch", "triton"):
            assert "skip links" in reason and name in reason
        else:
            assert reason is None
        assert unsupported_reason(name, model) is None  # synchronous: every backend
    with pytest.raises(ValueError, match=r"backend 'torch' does not implement skip links.*can: \['reference', 'cpp'\]"):
        get_backend("torch", torch.device("cpu"), model, schedule="alternating")
    with pytest.raises(ValueError, match="unknown schedule"):
        BACKENDS["torch"].unsupported_reason(model, schedule="jacobi")
    assert "unknown backend" in unsupported_reason("magic", model)


def test_registry_holds_backend_objects():
    assert list(BACKENDS) == ["reference", "torch", "cpp", "triton"]
    for name, be in BACKENDS.items():
        assert isinstance(be, Backend) and be.name == name and be.describe()
    assert [n for n, be in BACKENDS.items() if be.differentiable] == ["torch"]
    assert "unknown backend" in unavailable_reason("magic", "cpu")


def test_bptt_needs_a_differentiable_backend():
    from eqkern import bptt_gradients

    model, x, y = CASES[3].build(torch.float64)
    with pytest.raises(ValueError, match="'cpp' is not"):
        bptt_gradients(model, x, y, t_free=3, backend="cpp")
    res = bptt_gradients(model, x, y, t_free=3, backend="torch")
    assert res.final_state[0].shape == (x.shape[0], *model.state_shapes[0])


def test_info_backends_come_from_the_registry(monkeypatch):
    import eqkern
    from eqkern import backends

    monkeypatch.setattr(backends.BACKENDS["cpp"], "unavailable_reason",
                        lambda device: f"probe says no on {device.type}")
    d = eqkern.info()
    assert set(d["backends"]["cpu"]) == set(BACKENDS)
    assert d["backends"]["cpu"]["cpp"] == {"available": False, "reason": "probe says no on cpu"}
    assert d["backends"]["cuda"]["cpp"]["reason"] == "probe says no on cuda"
    for device, entries in d["backends"].items():
        for name, e in entries.items():
            if name != "cpp":
                assert e["reason"] == unavailable_reason(name, torch.device(device))
