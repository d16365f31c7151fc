"""GDU (Ernoult et al. 2019): EP's update matches BPTT's gradient; BPTT itself checked independently."""

from __future__ import annotations

import pytest
import torch

from conftest import rel_rms
from eqkern import CRNN, Conv, Linear, bptt_gradients, check_gdu
from eqkern.model import energy
from eqkern.backends.reference import primitive
from eqkern.model.activations import activate


def gdu_model() -> tuple[CRNN, torch.Tensor, torch.Tensor]:
    model = CRNN((1, 12, 12), [Conv(4), Conv(6), Linear(10)], 5).double()
    x = torch.randn(8, 1, 12, 12, dtype=torch.float64)
    y = torch.randint(0, 5, (8,))
    return model, x, y


@pytest.mark.slow_in_interpreter
def test_symmetric_ep_matches_bptt(backend):
    model, x, y = gdu_model()
    rows = check_gdu(model, x, y, beta=1e-3, t_free=150, t_nudge=30, backend=backend)
    for r in rows:
        print(f"{backend} {r['name']}: cosine {r['cosine']:.8f} rel {r['rel_error']:.2e}")
        assert r["cosine"] >= 0.99
        assert r["rel_error"] <= 1e-4


def test_one_sided_is_measurably_worse():
    """Laborieux Fig. 2: the one-sided estimate carries an O(β) bias that symmetric nudging removes."""
    model, x, y = gdu_model()
    kw = dict(beta=1e-3, t_free=150, t_nudge=30, backend="torch")
    sym = check_gdu(model, x, y, estimator="symmetric", **kw)
    one = check_gdu(model, x, y, estimator="one_sided", **kw)
    for s, o in zip(sym, one):
        print(f"{s['name']}: symmetric rel {s['rel_error']:.2e}, one-sided rel {o['rel_error']:.2e}")
        assert o["rel_error"] > 10 * s["rel_error"]
        assert o["cosine"] >= 0.99  # still a gradient, just a biased one


def bptt_through_autograd_dynamics(model, x, y, t_free):
    """Independent BPTT: Laborieux's dynamics (autograd of Φ with create_graph) unrolled."""
    state = [s.requires_grad_() for s in model.init_state(x.shape[0], like=x)]
    for _ in range(t_free):
        phi = primitive(model, x, state, 0.0, None)
        grads = torch.autograd.grad(phi, state, create_graph=True)
        state = [activate(spec.activation, g) for spec, g in zip(model.specs, grads)]
    loss = energy.loss(model, state[-1], y) / x.shape[0]
    return torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)


def test_bptt_matches_unrolled_autograd_of_phi():
    model = CRNN((2, 9, 9), [Conv(3), Conv(4, padding=0, pool=False), Linear(6)], 4).double()
    x = torch.randn(3, 2, 9, 9, dtype=torch.float64)
    y = torch.randint(0, 4, (3,))
    expected = bptt_through_autograd_dynamics(model, x, y, 12)
    model.zero_grad(set_to_none=True)
    bptt_gradients(model, x, y, t_free=12)
    for (name, p), e in zip(model.named_parameters(), expected):
        e = torch.zeros_like(p) if e is None else e
        err = rel_rms(e, p.grad)
        print(f"BPTT {name}: rel RMS {err:.2e}")
        assert err <= 1e-12


def test_bptt_prefix_stopped_by_tol_equals_a_long_fixed_prefix():
    """With ``tol`` the steps before the graph stop at the equilibrium: the gradient through the
    last ``truncate`` steps is then the one after a long fixed prefix (fp64, to 1e-9), in fewer
    steps; ``prefix_backend`` runs those steps on a backend without autograd (cpp) to the same."""
    model, x, y = gdu_model()
    t_free, truncate = 200, 10
    model.zero_grad(set_to_none=True)
    fixed = bptt_gradients(model, x, y, t_free=t_free, truncate=truncate)
    want = [p.grad.clone() for p in model.parameters()]
    for prefix_backend in (None, "cpp"):
        model.zero_grad(set_to_none=True)
        res = bptt_gradients(model, x, y, t_free=t_free, truncate=truncate, tol=1e-11,
                             check_every=5, prefix_backend=prefix_backend)
        errs = [rel_rms(w, p.grad) for w, p in zip(want, model.parameters())]
        print(f"prefix on {prefix_backend or 'torch'}: {res.steps} of {fixed.steps} steps, "
              f"max rel RMS vs fixed {max(errs):.2e}")
        assert fixed.steps == t_free and truncate < res.steps < t_free // 2
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())
        assert max(errs) <= 1e-9


def test_gdu_leaves_model_grads_alone():
    model, x, y = gdu_model()
    check_gdu(model, x, y, beta=1e-3, t_free=5, t_nudge=2, backend="torch")
    assert all(p.grad is None for p in model.parameters())


def test_ep_and_bptt_start_from_the_same_random_state(monkeypatch):
    """With state_init="uniform" both methods must settle from one draw, not two."""
    model, x, y = gdu_model()
    model.state_init = "uniform"
    drawn = []
    original = type(model).init_state

    def recording(self, batch, *, like=None):
        state = original(self, batch, like=like)
        drawn.append([s.clone() for s in state])
        return state

    monkeypatch.setattr(type(model), "init_state", recording)
    check_gdu(model, x, y, beta=1e-3, t_free=5, t_nudge=2, backend="torch")
    assert len(drawn) == 2, len(drawn)
    diffs = [(a - b).abs().max().item() for a, b in zip(*drawn)]
    print("EP's vs BPTT's initial state, max |difference| per layer:", diffs)
    assert max(diffs) == 0.0 and drawn[0][0].abs().sum() > 0


def test_compare_gradients_against_a_zero_gradient():
    """BPTT's gradient of a dead layer is exactly 0: EP's nonzero update there is infinitely wrong
    (it printed as 1e+295, a ratio to an epsilon), and two zero gradients agree."""
    from math import inf

    from eqkern.learning.gdu import compare_gradients, format_gdu

    zero, g = torch.zeros(3, 2), torch.tensor([[1e-5, 0.0], [0.0, 0.0], [2e-5, 0.0]])
    dead, both, half = (compare_gradients("w", g, zero), compare_gradients("b", zero, zero),
                        compare_gradients("v", g, 2 * g))
    print(format_gdu([dead, both, half]))
    assert (dead["cosine"], dead["rel_error"]) == (0.0, inf) and dead["bptt_norm"] == 0.0
    assert (both["cosine"], both["rel_error"]) == (1.0, 0.0)
    assert half["cosine"] == pytest.approx(1.0) and half["rel_error"] == pytest.approx(0.5)
    assert " inf " in format_gdu([dead])
