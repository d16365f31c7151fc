"""Separate feedback weights (Laborieux §2.4, §3.3, App. D.3, F): dynamics, the VF and KP-VF rules,
the weight angle, the backend guard and argument checks.

Every backend's vector-field dynamics are checked against ``reference`` (autograd of Laborieux's
per-layer functions Φ̃_n); the rules against autograd of the same functions (KP-VF: ∂Φ̃/∂θ at each
phase; VF: ∂/∂θ ⟨F(s*), s^a − s^b⟩ with F = ∂Φ̃/∂s by a double backward), which shares no code
with eqkern.learning.separate_feedback.
"""

from __future__ import annotations


import pytest
import torch

import cases
from cases import CASES, check_states_match
from conftest import rel_rms, require_triton
from eqkern import CRNN, Conv, ep_gradients, settle, weight_angles
from eqkern.learning.separate_feedback import feedback_gradients
from eqkern.backends import BACKENDS, reference
from eqkern.backends.base import Phase, accumulate_grads
from eqkern.data.datasets import load_dataset
from eqkern.training.optim import param_groups

# Conv with and without pool, odd sizes, batch 1, FC only, MSE, FRE-RNN scales (the dynamics only).
DYN_CASES = CASES
RULE_CASES = [CASES[0], CASES[1], CASES[2], CASES[3]]


def build(case, dtype, feedback="separate", seed=0):
    """``case``'s model with ``feedback``; the same seed gives the same W, b, read-out (B after)."""
    torch.manual_seed(seed)
    model = CRNN(case.input_shape, case.layers, case.num_classes, case.readout,
                 feedback=feedback, **case.kwargs).to(dtype)
    gen = torch.Generator().manual_seed(seed + 1)
    x = (torch.rand(case.batch, *case.input_shape, generator=gen) * 2 - 0.5).to(dtype)
    y = torch.randint(0, case.num_classes, (case.batch,), generator=gen)
    return model, x, y


def copy_feedback(model):
    with torch.no_grad():
        for i in range(1, model.num_layers):
            model.feedback_weight(i).copy_(model.connections[i].weight)
    return model


def grads(model, x, y, backend, **kw):
    torch.manual_seed(7)
    model.zero_grad(set_to_none=True)
    ep_gradients(model, x, y, beta=cases.BETA, t_free=cases.T_FREE, t_nudge=cases.T_NUDGE,
                 backend=backend, **kw)
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def phases(model, x, y, backend="reference"):
    """Free, +β and −β equilibria (Laborieux's three phases) on ``backend``."""
    torch.manual_seed(7)
    state = model.init_state(x.shape[0], like=x)
    settle(model, x, state, 0.0, cases.T_FREE, backend=backend)
    free = [s.clone() for s in state]
    plus = settle(model, x, [s.clone() for s in free], cases.BETA, cases.T_NUDGE, y, backend=backend)
    minus = settle(model, x, [s.clone() for s in free], -cases.BETA, cases.T_NUDGE, y, backend=backend)
    return free, Phase(plus, cases.BETA), Phase(minus, -cases.BETA)


# --- B = W: the separate-feedback engine is the symmetric one ---------------------------------

@pytest.mark.parametrize("case", DYN_CASES, ids=[c.id for c in DYN_CASES])
@pytest.mark.slow_in_interpreter
def test_copied_feedback_equals_symmetric(case, backend):
    """States (free, ±β) and KP-VF gradients with B_l := W_l equal the symmetric model's EP
    (fp64, 1e-12): every W_l, b_l and the read-out, and B_l gets W_l's gradient."""
    _copied_feedback_equals_symmetric(case, backend)


def _copied_feedback_equals_symmetric(case, backend):
    sym, x, y = build(case, torch.float64, "symmetric")
    sep = copy_feedback(build(case, torch.float64)[0])
    for label, r_phase, o_phase in zip(("free", "+β", "−β"), phases(sym, x, y, backend),
                                       phases(sep, x, y, backend)):
        r_state = r_phase if isinstance(r_phase, list) else r_phase.state
        o_state = o_phase if isinstance(o_phase, list) else o_phase.state
        for i, (r, o) in enumerate(zip(r_state, o_state)):
            err = rel_rms(r, o)
            print(f"{case.id} {backend} {label} state[{i}] rel RMS {err:.2e}")
            assert err <= 1e-12
    if any(s.alpha != 1.0 or s.gamma != 1.0 for s in case.layers):
        return  # EP's update ignores the FRE-RNN scales; the dynamics above are what they change
    g_sym = grads(sym, x, y, backend)
    g_sep = grads(sep, x, y, backend, rule="kp-vf")
    for name, g in g_sym.items():
        err = rel_rms(g, g_sep[name])
        print(f"{case.id} {backend} {name} rel RMS {err:.2e}")
        assert err <= 1e-12
    for i in range(1, sep.num_layers):
        err = rel_rms(g_sym[f"connections.{i}.weight"], g_sep[f"feedback_weights.{i}"])
        print(f"{case.id} {backend} feedback_weights.{i} vs W rel RMS {err:.2e}")
        assert err <= 1e-12


@pytest.mark.parametrize("case", [CASES[0], CASES[3]], ids=[CASES[0].id, CASES[3].id])
def test_copied_feedback_equals_symmetric_triton(case, request, monkeypatch):
    """The same on the triton backend (its separate path: B_l and a forward launch for its pool
    indices), short phases for the interpreter."""
    require_triton(request)
    monkeypatch.setattr(cases, "T_FREE", 4)
    monkeypatch.setattr(cases, "T_NUDGE", 4)
    _copied_feedback_equals_symmetric(case, "triton")


def test_separate_feedback_changes_the_dynamics():
    """With independent B_l the equilibrium is not the symmetric one (so the tests above can fail)."""
    case = CASES[0]
    sym, x, y = build(case, torch.float64, "symmetric")
    sep = build(case, torch.float64)[0]
    for r, o in zip(phases(sym, x, y, "torch")[0], phases(sep, x, y, "torch")[0]):
        err = rel_rms(r, o)
        print(f"symmetric vs separate feedback: rel RMS {err:.2e}")
        assert err > 1e-3


def test_symmetric_model_is_unchanged():
    """feedback='symmetric' (the default) draws the same parameters and has no B_l."""
    case = CASES[0]
    torch.manual_seed(3)
    default = CRNN(case.input_shape, case.layers, case.num_classes)
    sym = build(case, torch.float32, "symmetric", seed=3)[0]
    sep = build(case, torch.float32, "separate", seed=3)[0]
    assert default.feedback_weights is None and not default.separate_feedback
    assert list(default.state_dict()) == list(sym.state_dict())
    for name, p in default.state_dict().items():
        assert torch.equal(p, sym.state_dict()[name]) and torch.equal(p, sep.state_dict()[name])
    assert sorted(n for n in sep.state_dict() if n.startswith("feedback")) == [
        "feedback_weights.1", "feedback_weights.2"]
    assert weight_angles(default) == []


# --- vector-field dynamics of each backend against reference ---------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("case", DYN_CASES, ids=[c.id for c in DYN_CASES])
@pytest.mark.vs_reference
@pytest.mark.slow_in_interpreter
def test_vector_field_matches_reference(backend, case, dtype):
    check_states_match(build(case, dtype), backend, f"{backend} VF {case.id} {dtype}")


TRITON_CASES = [CASES[0], CASES[2], CASES[3], CASES[5]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("case", TRITON_CASES, ids=[c.id for c in TRITON_CASES])
def test_triton_vector_field_matches_reference(case, dtype, request, monkeypatch):
    """Short phases (the interpreter is slow, see test_triton_backend.py)."""
    require_triton(request)
    monkeypatch.setattr(cases, "T_FREE", 4)
    monkeypatch.setattr(cases, "T_NUDGE", 2)
    check_states_match(build(case, dtype), "triton", f"triton VF {case.id} {dtype}")


@pytest.mark.vs_reference
def test_kp_vf_gradients_match_reference_backend(backend, monkeypatch):
    """The whole ep_gradients of a separate model (phases + Hebbian + rule) on each backend."""
    if backend == "triton":  # the interpreter is slow: short phases
        monkeypatch.setattr(cases, "T_FREE", 4)
        monkeypatch.setattr(cases, "T_NUDGE", 4)  # enough for the nudge to reach layer 0
    model, x, y = build(CASES[0], torch.float64)
    ref = grads(model, x, y, "reference", rule="kp-vf", leakage=0.1)
    out = grads(model, x, y, backend, rule="kp-vf", leakage=0.1)
    assert sorted(ref) == sorted(out)
    for name in ref:
        err = rel_rms(ref[name], out[name])
        print(f"{backend} KP-VF {name} rel RMS {err:.2e}")
        assert err <= 1e-10 and ref[name].norm() > 0


# --- the learning rules against autograd of Laborieux's per-layer functions Φ̃ ---------------

def rule_oracle(model, x, y, a, b, free, rule):
    """Gradients of connections and feedback weights by autograd (see the module docstring)."""
    named = [(n, p) for n, p in model.named_parameters() if not n.startswith("out")]
    names, params = [n for n, _ in named], [p for _, p in named]
    scale = -1.0 / ((a.beta - b.beta) * x.shape[0])
    with torch.enable_grad():
        if rule == "kp-vf":  # eq. 44: ∂Φ̃/∂θ at each phase's own states, then eq. 43's mean
            delta = (reference.primitive(model, x, a.state, a.beta, y, True)
                     - reference.primitive(model, x, b.state, b.beta, y, True))
            g = dict(zip(names, torch.autograd.grad(delta * scale, params)))
            for i in range(1, model.num_layers):
                w, bw = f"connections.{i}.weight", f"feedback_weights.{i}"
                g[w] = g[bw] = (g[w] + g[bw]) / 2
            return g
        # eq. 41: ∂F/∂θ(s*)ᵀ·(s^a − s^b) with F = ∂Φ̃/∂s at s* (the pre-activation field)
        leaves = [s.detach().requires_grad_() for s in free]
        field = torch.autograd.grad(reference.primitive(model, x, leaves, 0.0, None, True), leaves,
                                    create_graph=True)
        dot = sum((f * (sa - sb)).sum() for f, sa, sb in zip(field, a.state, b.state))
        return dict(zip(names, torch.autograd.grad(dot * scale, params)))


@pytest.mark.parametrize("rule", ["kp-vf", "vf"])
@pytest.mark.parametrize("case", RULE_CASES, ids=[c.id for c in RULE_CASES])
def test_rules_match_autograd(case, rule):
    model, x, y = build(case, torch.float64)
    free, a, b = phases(model, x, y)
    model.zero_grad(set_to_none=True)
    be = BACKENDS["torch"]
    g = be.hebbian_gradients(model, x, y, a, b)
    feedback_gradients(be, model, g, a, b, free, rule=rule, leakage=0.0)
    accumulate_grads(g)
    ref = rule_oracle(model, x, y, a, b, free, rule)
    for name, p in model.named_parameters():
        if name in ref:
            err = rel_rms(ref[name], p.grad)
            print(f"{case.id} {rule} {name} rel RMS {err:.2e}")
            assert err <= 1e-10
    if rule == "vf":  # the rules differ, so the comparison above can fail
        kp = rule_oracle(model, x, y, a, b, free, "kp-vf")
        assert rel_rms(kp["feedback_weights.1"], model.feedback_weights["1"].grad) > 1e-2


def test_leakage_is_weight_decay():
    """KP-VF + leakage λ with plain SGD equals KP-VF + SGD(weight_decay=λ) on W_l, B_l."""
    model, x, y = build(CASES[3], torch.float64)
    twin = build(CASES[3], torch.float64)[0]
    lam = 0.05
    grads(model, x, y, "torch", leakage=lam)
    grads(twin, x, y, "torch")
    for i in range(1, model.num_layers):
        for p, q in ((model.connections[i].weight, twin.connections[i].weight),
                     (model.feedback_weight(i), twin.feedback_weight(i))):
            err = rel_rms(q.grad + lam * q.detach(), p.grad)
            print(f"leakage layer {i}: rel RMS {err:.2e}")
            assert err <= 1e-14
    assert torch.equal(model.connections[0].weight.grad, twin.connections[0].weight.grad)


# --- alignment -------------------------------------------------------------------------------

def test_weight_angles_against_formula():
    model = build(CASES[0], torch.float32)[0]
    angles = weight_angles(model)
    assert len(angles) == model.num_layers - 1
    for i, got in enumerate(angles, start=1):
        w, b = model.connections[i].weight.double(), model.feedback_weight(i).double()
        cos = torch.nn.functional.cosine_similarity(w.flatten(), b.flatten(), dim=0)
        want = torch.rad2deg(torch.acos(cos)).item()
        print(f"layer {i}: angle {got:.4f}° (cosine_similarity: {want:.4f}°)")
        assert abs(got - want) < 1e-9
        assert 60.0 < got < 120.0  # independent inits: nearly orthogonal
    copy_feedback(model)
    assert max(weight_angles(model)) < 1e-3


def _train(rule, steps=30, batch=32, leakage=2.0):
    """``steps`` SGD steps (no momentum, layer-wise rates) of a small conv net on mnist_subset at
    14×14; returns the angles before and after and ``‖W_1 − B_1‖`` before and after."""
    data = load_dataset("mnist_subset", limit_train=steps * batch, limit_test=10)
    x = torch.nn.functional.avg_pool2d(data.x_train, 2)
    torch.manual_seed(0)
    model = CRNN((1, 14, 14), [Conv(8), Conv(16)], 10, feedback="separate")
    opt = torch.optim.SGD(param_groups(model, [0.2, 0.1, 0.05]))

    def gap():
        return (model.connections[1].weight - model.feedback_weight(1)).norm().item()

    start, gap0 = weight_angles(model), gap()
    for k in range(steps):
        opt.zero_grad(set_to_none=True)
        sl = slice(k * batch, (k + 1) * batch)
        ep_gradients(model, x[sl], data.y_train[sl], beta=0.5, t_free=12, t_nudge=4,
                     backend="torch", rule=rule, leakage=leakage)
        opt.step()
    return start, weight_angles(model), gap0, gap()


def test_kp_vf_aligns_and_vf_does_not():
    """Laborieux Fig. 7 in miniature: same λ, same data; KP-VF's angle falls, VF's stays near 90°.

    KP-VF also follows App. D.3's proof exactly: with equal updates and plain SGD,
    ``W − B ← (1 − ηλ)(W − B)`` each step, so ``‖W_1 − B_1‖`` shrinks by ``(1 − 0.1·2)^30``."""
    steps, leakage, lr_1 = 30, 2.0, 0.1
    start, kp, gap0, gap_kp = _train("kp-vf", steps, leakage=leakage)
    start_vf, vf, _, gap_vf = _train("vf", steps, leakage=leakage)
    want = (1 - lr_1 * leakage) ** steps
    print(f"angle (°) start {start[0]:.2f}, after {steps} steps: KP-VF {kp[0]:.2f}, VF {vf[0]:.2f}; "
          f"‖W−B‖ ratio KP-VF {gap_kp / gap0:.4e} (proof: {want:.4e}), VF {gap_vf / gap0:.3f}")
    assert start == start_vf and 80 < start[0] < 100
    assert kp[0] < 0.25 * start[0] and vf[0] > 80.0
    assert abs(gap_kp / gap0 / want - 1) < 1e-2


# --- backend guard and argument checks -------------------------------------------------------

def test_bad_arguments():
    case = CASES[3]
    with pytest.raises(ValueError, match="feedback"):
        CRNN(case.input_shape, case.layers, 5, feedback="transposed")
    sep, x, y = build(case, torch.float32)
    sym = build(case, torch.float32, "symmetric")[0]
    kw = dict(beta=0.5, t_free=2, t_nudge=1, backend="torch")
    with pytest.raises(ValueError, match="rule"):
        ep_gradients(sep, x, y, rule="kp", **kw)
    with pytest.raises(ValueError, match="rule"):
        ep_gradients(sym, x, y, rule="vf", **kw)
    for bad in (-0.1, float("nan")):
        with pytest.raises(ValueError, match="leakage"):
            ep_gradients(sep, x, y, leakage=bad, **kw)
    with pytest.raises(ValueError, match="leakage"):
        ep_gradients(sym, x, y, leakage=0.1, **kw)
    with pytest.raises(ValueError, match="feedback weight"):
        sep.feedback_weight(0)


def test_train_vgg_logs_the_weight_angle(tmp_path):
    """A preset with feedback='separate': B_l in W_l's optimizer group, one angle per l ≥ 1 and
    epoch in the history and metrics.jsonl."""
    import json

    from eqkern.data.datasets import DataSplit
    from eqkern.training.train_preset import train_vgg

    g = torch.Generator().manual_seed(0)
    shape = (3, 32, 32)
    data = DataSplit(torch.randn(16, *shape, generator=g), torch.randint(0, 10, (16,), generator=g),
                     torch.randn(8, *shape, generator=g), torch.randint(0, 10, (8,), generator=g),
                     tuple(map(str, range(10))), shape, 10)
    torch.set_num_threads(1)
    res = train_vgg("vgg5-ce-cifar10", data=data, progress=False, log=lambda s: None,
                    out_dir=tmp_path, width=1 / 32, t_free=3, t_nudge=2, batch_size=8, epochs=2,
                    backend="torch", feedback="separate", rule="kp-vf", leakage=0.5,
                    lr=(0.5,), weight_decay=0.0)
    model = res.model
    assert model.separate_feedback
    angles = [h["weight_angle"] for h in res.history]
    print("weight angle per epoch:", angles)
    assert all(len(a) == model.num_layers - 1 for a in angles)
    assert angles[-1] == weight_angles(model)
    groups = param_groups(model, 0.1)
    for i in range(1, model.num_layers):
        assert any(p is model.feedback_weight(i) for p in groups[i]["params"])
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["weight_angle"] == angles[-1]
    with pytest.raises(ValueError, match="rule"):
        train_vgg("vgg5-ce-cifar10", data=data, progress=False, log=lambda s: None,
                  rule="vf", epochs=1)


def test_rule_ep_keeps_feedback_fixed():
    """rule='ep': W_l gets the symmetric EP update (+ λ·W_l), B_l no gradient at all."""
    model, x, y = build(CASES[0], torch.float64)
    g = grads(model, x, y, "torch", rule="ep", leakage=0.1)
    assert not any(n.startswith("feedback") for n in g)
    g0 = grads(model, x, y, "torch", rule="ep")
    w = model.connections[1].weight
    err = rel_rms(g0["connections.1.weight"] + 0.1 * w.detach(), g["connections.1.weight"])
    print(f"rule ep leakage: rel RMS {err:.2e}")
    assert err <= 1e-14
