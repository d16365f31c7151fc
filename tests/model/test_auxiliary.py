"""LE / KD / KDW (Lin §3.2): the analytic nudge terms and updates equal autograd of the augmented Φ,
and EP's augmented estimate matches BPTT's gradient of ``L_EP + κ Σ L_aug`` (Lin eq. 12)."""

from __future__ import annotations

import pytest
import torch

from cases import AUG_LAYERS, AUGMENTS, build_augmented as build, check_grads_match, check_states_match
from eqkern import CRNN, check_gdu, ep_gradients
from eqkern.model.auxiliary import Distill, LocalError, Targets  # noqa: F401

# The triton backend's augmented runs (short phases) are in tests/backends/test_triton_backend.py.


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("aug_id", list(AUGMENTS))
@pytest.mark.vs_reference
@pytest.mark.slow_in_interpreter
def test_augmented_states_match_reference(backend, aug_id, dtype):
    check_states_match(build(aug_id, dtype), backend, f"{backend} {aug_id} {dtype}")


@pytest.mark.parametrize("estimator", ["symmetric", "one_sided"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("aug_id", list(AUGMENTS))
@pytest.mark.vs_reference
@pytest.mark.slow_in_interpreter
def test_augmented_gradients_match_reference(backend, aug_id, dtype, estimator):
    check_grads_match(build(aug_id, dtype), backend, estimator, f"{backend} {aug_id} {dtype}")


def test_frozen_projections_get_no_gradient(backend):
    model, x, y = build("le-frozen-fc", torch.float64)
    ep_gradients(model, x, y, beta=0.5, t_free=5, t_nudge=3, backend=backend)
    assert all(m.weight.grad is None for m in model.aux)
    assert all(p.grad is not None for p in model.connections.parameters())


@pytest.mark.parametrize("aug_id", ["le", "kd", "kdw"])
def test_augmented_ep_matches_bptt(aug_id):
    model, x, y = build(aug_id, torch.float64, batch=6)
    rows = check_gdu(model, x, y, beta=1e-3, t_free=120, t_nudge=30, backend="torch")
    for r in rows:
        print(f"{aug_id} {r['name']}: cosine {r['cosine']:.8f} rel {r['rel_error']:.2e}")
        assert r["cosine"] >= 0.99 and r["rel_error"] <= 1e-3


def test_kd_targets_are_checked():
    model, x, y = build("kd", torch.float32)
    with pytest.raises(ValueError, match="KD needs eqkern.model.auxiliary.Targets"):
        ep_gradients(model, x, y.labels, beta=0.5, t_free=2, t_nudge=2)
    bad = Targets(y.labels, [y.features[0], y.features[1][:, :2]])
    with pytest.raises(ValueError, match=r"teacher features\[1\] have shape"):
        ep_gradients(model, x, bad, beta=0.5, t_free=2, t_nudge=2)
    with pytest.raises(ValueError, match="augment.layers must name"):
        CRNN((2, 11, 11), AUG_LAYERS, 5, augment=LocalError((3,)))


@pytest.mark.parametrize("aug_id", ["le", "kd", "kdw", None])
def test_weighs_kappa_says_whether_kappa_changes_the_update(aug_id):
    """The engine logs κ, and the GDU check takes the run's κ, exactly where κ weighs something."""
    if aug_id is None:
        torch.manual_seed(0)
        model = CRNN((2, 11, 11), AUG_LAYERS, 5).double()
        x, y = torch.randn(4, 2, 11, 11, dtype=torch.float64), torch.arange(4) % 5
    else:
        model, x, y = build(aug_id, torch.float64, batch=4)
    grads = []
    for kappa in (0.0, 1.0):
        model.kappa = kappa
        model.zero_grad(set_to_none=True)
        ep_gradients(model, x, y, beta=0.5, t_free=6, t_nudge=3, backend="torch")
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    assert len(grads[0]) == len(grads[1]) > 0 and all(g.isfinite().all() for g in grads[1])
    change = max((a - b).abs().max().item() for a, b in zip(grads[0], grads[1]))
    print(f"{aug_id}: weighs_kappa {model.weighs_kappa}, update change from κ 0 to 1: {change:.3e}")
    assert model.weighs_kappa == (change > 0)
