"""FRE-RNN (Liu & Chen): skip links in the energy and the ``rule="fre"`` update ΔW_i = ds_{i+1} s_iᵀ."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

import cases
from cases import Case, check_grads_match, check_states_match
from conftest import rel_rms, require_triton
from eqkern import CRNN, Conv, Linear, check_gdu, ep_gradients, settle
from eqkern.backends import BACKENDS, get_backend
from eqkern.backends.base import Phase, accumulate_grads
from eqkern.training.presets import get_preset
from eqkern.model.skips import SkipLink, random_skips, residual_skips

DTYPES = [torch.float32, torch.float64]

SKIP_CASES = [
    Case("fc-skips", (13,), [Linear(8), Linear(7), Linear(6), Linear(5)], batch=4,
         kwargs={"skips": [(0, 2), (1, 3), (0, 3)]}),
    Case("fc-skips-scaled-mse", (11,), [Linear(8, gamma=0.3), Linear(7, alpha=0.8, gamma=0.5),
                                        Linear(6, activation="tanh"), Linear(5)],
         readout="mse", kwargs={"skips": [(0, 2), (1, 3)], "state_init": "uniform"}),
    # same resolution (1×1 conv, f = 1) and conv → FC
    Case("conv-same-res", (2, 9, 9), [Conv(3, pool=False), Conv(4, pool=False), Conv(3, pool=False),
                                      Linear(5)], kwargs={"skips": [(0, 2), (1, 3), (0, 3)]}),
    # downsampled: 11×11 → 5×5 (f = 2, odd size: last row/column dropped), 11×11 → 2×2 (f = 5)
    Case("conv-downsampled", (1, 11, 11),
         [Conv(3, pool=False), Conv(2, pool=False), Conv(4), Conv(3, activation="clamp01", gamma=0.4),
          Linear(6)], batch=2, kwargs={"skips": [(0, 2), (1, 3), (0, 3), (2, 4)]}),
    Case("random-topology", (9,), [Linear(6), Linear(5), Linear(7), Linear(4), Linear(6), Linear(5)],
         kwargs={"skips": random_skips(6, 0.5, seed=3)}),
]
IDS = [c.id for c in SKIP_CASES]


def test_random_topology_is_seeded_and_nontrivial():
    pairs = random_skips(6, 0.5, seed=3)
    print("random_skips(6, 0.5, seed=3) =", pairs)
    assert pairs == random_skips(6, 0.5, seed=3) and len(pairs) >= 2
    assert all(j > i + 1 for i, j in pairs)
    assert random_skips(6, 0.0) == () and len(random_skips(6, 1.0)) == 10  # all 4+3+2+1 pairs
    assert residual_skips(10, 3) == ((0, 3), (3, 6), (6, 9))  # the paper's 1→4, 4→7, 7→10


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp64"])
@pytest.mark.parametrize("case", SKIP_CASES, ids=IDS)
@pytest.mark.vs_reference
@pytest.mark.slow_in_interpreter
def test_settle_matches_autograd_of_extended_phi(backend, case, dtype):
    check_states_match(case.build(dtype), backend, f"{backend} {case.id} {dtype}")


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp64"])
@pytest.mark.parametrize("case", SKIP_CASES, ids=IDS)
@pytest.mark.vs_reference
@pytest.mark.slow_in_interpreter
def test_ep_gradients_match_reference(backend, case, dtype):
    check_grads_match(case.build(dtype), backend, "symmetric", f"{backend} {case.id} {dtype}")


TRITON_SKIP_CASES = [SKIP_CASES[0], SKIP_CASES[2], SKIP_CASES[3]]


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp64"])
@pytest.mark.parametrize("case", TRITON_SKIP_CASES, ids=[c.id for c in TRITON_SKIP_CASES])
def test_triton_skips_match_reference(case, dtype, request, monkeypatch):
    """States and gradients, short phases for the interpreter (see test_triton_backend.py)."""
    require_triton(request)
    monkeypatch.setattr(cases, "T_FREE", 4)
    monkeypatch.setattr(cases, "T_NUDGE", 3)
    check_states_match(case.build(dtype), "triton", f"triton {case.id} {dtype}")
    check_grads_match(case.build(dtype), "triton", "symmetric", f"triton {case.id} {dtype}")


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp64"])
@pytest.mark.parametrize("case", SKIP_CASES, ids=IDS)
@pytest.mark.vs_reference
@pytest.mark.slow_in_interpreter
def test_alternating_with_skips_matches_reference(backend, case, dtype):
    """A link may join two layers of one parity group: the C++ loop reads them all first. A
    backend without skip terms in its alternating step says so, and naming it is refused with
    that reason (never a silent run without the links)."""
    built = case.build(dtype)
    model, x, _ = built
    reason = BACKENDS[backend].unsupported_reason(model, schedule="alternating")
    if reason is not None:
        print(f"{backend}: {reason}")
        with pytest.raises(ValueError, match=re.escape(reason)):
            settle(model, x, model.init_state(x.shape[0], like=x), 0.0, 2, backend=backend,
                   schedule="alternating")
        return
    check_states_match(built, backend, f"{backend} alternating {case.id} {dtype}",
                       schedule="alternating")


@pytest.mark.parametrize("case", SKIP_CASES, ids=IDS)
@pytest.mark.vs_reference
def test_hebbian_update_of_skip_links_is_autograd_of_delta_phi(backend, case):
    """On arbitrary phase states (not equilibria): each backend's update of every parameter, the
    R_ij included, equals ``reference``'s (autograd of ΔΦ)."""
    model, x, y = case.build(torch.float64)
    a = Phase([torch.rand(x.shape[0], *s, dtype=x.dtype) for s in model.state_shapes], 0.7)
    b = Phase([torch.rand(x.shape[0], *s, dtype=x.dtype) for s in model.state_shapes], -0.4)
    grads = {}
    for name in ("reference", backend):
        model.zero_grad(set_to_none=True)
        accumulate_grads(BACKENDS[name].hebbian_gradients(model, x, y, a, b))
        grads[name] = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert any(n.startswith("skip_links") for n in grads["reference"])
    for name, ref in grads["reference"].items():
        err = rel_rms(ref, grads[backend][name])
        print(f"{case.id} {name}: rel RMS {err:.2e}")
        assert err <= 1e-12


def test_skip_link_transpose_is_the_adjoint():
    """⟨t, R s⟩ = ⟨Rᵀ t, s⟩ for every projection form, odd sizes included."""
    for src, dst in [((3, 11, 11), (4, 5, 5)), ((3, 11, 11), (2, 2, 2)), ((3, 6, 6), (5, 6, 6)),
                     ((3, 5, 5), (7,)), ((9,), (4,))]:
        link = SkipLink(src, dst).double()
        s, t = torch.randn(2, *src, dtype=torch.float64), torch.randn(2, *dst, dtype=torch.float64)
        lhs, rhs = (t * link(s)).sum().item(), (link.transpose(t) * s).sum().item()
        print(f"{src} -> {dst}: <t, Rs> {lhs:.15f}  <R^T t, s> {rhs:.15f}")
        assert abs(lhs - rhs) <= 1e-12 * max(1.0, abs(lhs))


@pytest.mark.parametrize("layers,skips,shape", [
    ([Linear(8), Linear(7), Linear(6), Linear(10)], [(0, 2), (1, 3), (0, 3)], (10,)),
    ([Conv(3, pool=False), Conv(4), Conv(3, pool=False), Linear(6)], [(0, 2), (0, 3), (1, 3)], (1, 8, 8)),
], ids=["fc", "conv"])
def test_ep_with_skips_matches_bptt(layers, skips, shape):
    model = CRNN(shape, layers, 4, skips=skips).double()
    x = torch.randn(6, *shape, dtype=torch.float64)
    y = torch.randint(0, 4, (6,))
    rows = check_gdu(model, x, y, beta=1e-3, t_free=150, t_nudge=30, backend="torch")
    assert any(r["name"].startswith("skip_links") for r in rows)
    for r in rows:
        print(f"{r['name']}: cosine {r['cosine']:.8f} rel {r['rel_error']:.2e}")
        assert r["cosine"] >= 0.99


def _hand_fre(model: CRNN, x, y, free, nudged):
    """ΔW_i = ds_{i+1} s_iᵀ, Δb_i = ds_{i+1}, ΔW_out = (onehot − ŷ⁰) s_Nᵀ, ΔR_ij = ds_j s_iᵀ,
    sample by sample with explicit outer products; returned as −Δ/batch per parameter name."""
    n = x.shape[0]
    ins = [x] + list(free[:-1])
    out: dict[str, torch.Tensor] = {}
    for i in range(model.num_layers):
        dw = sum(torch.outer(nudged[i][k] - free[i][k], ins[i][k]) for k in range(n))
        db = sum(nudged[i][k] - free[i][k] for k in range(n))
        out[f"connections.{i}.weight"], out[f"connections.{i}.bias"] = -dw / n, -db / n
    w, b = model.out.weight.detach(), model.out.bias.detach()
    for k in range(n):
        p = torch.softmax(w @ free[-1][k] + b, dim=0)
        e = F.one_hot(y[k], model.num_classes).to(x.dtype) - p
        out["out.weight"] = out.get("out.weight", 0) - torch.outer(e, free[-1][k]) / n
        out["out.bias"] = out.get("out.bias", 0) - e / n
    for m, (i, j) in enumerate(model.skips):
        dr = sum(torch.outer(nudged[j][k] - free[j][k], free[i][k]) for k in range(n))
        out[f"skip_links.{m}.map.weight"] = -dr / n
    return out


@pytest.mark.parametrize("skips", [(), [(0, 2)]], ids=["plain", "skip"])
def test_fre_rule_equals_hand_computation(skips):
    model = CRNN((6,), [Linear(5, gamma=0.1), Linear(4), Linear(3)], 3, skips=skips).double()
    x, y = torch.randn(4, 6, dtype=torch.float64), torch.tensor([0, 2, 1, 2])
    beta, t_free, t_nudge = 0.3, 25, 12
    state = model.init_state(4, like=x)
    settle(model, x, state, 0.0, t_free, backend="reference")
    free = [s.clone() for s in state]
    settle(model, x, state, beta, t_nudge, y, backend="reference")
    want = _hand_fre(model, x, y, free, state)
    model.zero_grad(set_to_none=True)
    ep_gradients(model, x, y, beta=beta, t_free=t_free, t_nudge=t_nudge, estimator="one_sided",
                 rule="fre", backend="reference")
    for name, p in model.named_parameters():
        err = rel_rms(want[name], p.grad)
        print(f"fre {name}: rel RMS {err:.2e} (|g| {p.grad.norm():.3e})")
        assert p.grad.norm() > 0 and err <= 1e-12


def test_fre_rule_symmetric_and_random_sign_estimate_the_one_sided_ds():
    """symmetric: ds = (s⁺ − s⁻)/2; random sign: ds carries β's sign, so with −β it still
    estimates s^{|β|} − s⁰ (to first order): all three agree to O(β)."""
    model = CRNN((6,), [Linear(5), Linear(4)], 3).double()
    x, y = torch.randn(4, 6, dtype=torch.float64), torch.tensor([0, 2, 1, 2])
    grads = {}
    for est, seed in (("one_sided", 0), ("symmetric", 0), ("random_sign", 0), ("random_sign", 1)):
        gen = torch.Generator().manual_seed(seed)
        model.zero_grad(set_to_none=True)
        res = ep_gradients(model, x, y, beta=1e-4, t_free=40, t_nudge=40, estimator=est, rule="fre",
                           backend="torch", generator=gen)
        grads[(est, res.beta)] = torch.cat([p.grad.flatten() for p in model.parameters()])
    one = grads[("one_sided", 1e-4)]
    assert {b for _, b in grads} == {1e-4, -1e-4}  # both signs were drawn
    for key, g in grads.items():
        err = rel_rms(one, g)
        print(f"fre {key}: rel RMS to one-sided {err:.2e}")
        assert err <= 1e-2


@pytest.mark.vs_reference
@pytest.mark.slow_in_interpreter
def test_fre_rule_runs_on_every_settle(backend):
    """The rule is a function of the phase states: any backend's settle feeds it (conv, pools)."""
    model = CRNN((1, 12, 12), [Conv(3, 5, 0, activation="clamp01", gamma=0.01),
                               Conv(4, 3, 0, activation="clamp01")], 4).double()
    x, y = torch.rand(3, 1, 12, 12, dtype=torch.float64), torch.tensor([0, 3, 1])
    grads = {}
    for be in ("reference", backend):
        model.zero_grad(set_to_none=True)
        ep_gradients(model, x, y, beta=0.25, t_free=20, t_nudge=10, estimator="one_sided",
                     rule="fre", backend=be)
        grads[be] = {n: p.grad.clone() for n, p in model.named_parameters()}
    for name, ref in grads["reference"].items():
        err = rel_rms(ref, grads[backend][name])
        print(f"fre {backend} {name}: rel RMS {err:.2e}")
        assert ref.norm() > 0 and err <= 1e-10


def test_models_without_skips_are_unchanged():
    """No skip parameters, no state-dict keys, the same RNG stream; and links whose R is zero
    leave the torch dynamics bitwise equal to the skip-free model's."""
    torch.manual_seed(5)
    plain = CRNN((1, 9, 9), [Conv(3), Conv(4, pool=False), Linear(6)], 4)
    after_plain = torch.rand(3)
    torch.manual_seed(5)
    empty = CRNN((1, 9, 9), [Conv(3), Conv(4, pool=False), Linear(6)], 4, skips=())
    assert torch.equal(torch.rand(3), after_plain)
    assert list(plain.state_dict()) == list(empty.state_dict())
    assert all(torch.equal(p, q) for p, q in zip(plain.parameters(), empty.parameters()))
    assert not any("skip" in k for k in plain.state_dict())

    zero = CRNN((1, 9, 9), [Conv(3), Conv(4, pool=False), Linear(6)], 4, skips=[(0, 2)])
    zero.load_state_dict(plain.state_dict(), strict=False)
    with torch.no_grad():
        zero.skip_links[0].weight.zero_()
    x, y = torch.randn(2, 1, 9, 9), torch.tensor([1, 3])
    for beta in (0.0, 0.5):
        s1, s2 = plain.init_state(2), zero.init_state(2)
        settle(plain, x, s1, beta, 7, y if beta else None, backend="torch")
        settle(zero, x, s2, beta, 7, y if beta else None, backend="torch")
        assert all(torch.equal(a, b) for a, b in zip(s1, s2))


def test_backend_capability_for_skip_models(monkeypatch):
    monkeypatch.delenv("EQKERN_BACKEND", raising=False)
    model = CRNN((8,), [Linear(5), Linear(4), Linear(3)], 2, skips=[(0, 2)])
    cpu = torch.device("cpu")
    assert get_backend(None, cpu, model).name in ("cpp", "torch")  # the default
    assert get_backend("reference", cpu, model) is BACKENDS["reference"]
    with pytest.raises(ValueError, match="triton.*does not implement skip links with schedule='alternating'"):
        get_backend("triton", cpu, model, schedule="alternating")


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="skips: \\(2, 1\\).*lower to a higher"):
        CRNN((8,), [Linear(5), Linear(4), Linear(3)], 2, skips=[(2, 1)])
    with pytest.raises(ValueError, match="skips: \\(0, 1\\)"):
        CRNN((8,), [Linear(5), Linear(4), Linear(3)], 2, skips=[(0, 1)])
    with pytest.raises(ValueError, match="skips: \\(0, 5\\).*state layers 0..2"):
        CRNN((8,), [Linear(5), Linear(4), Linear(3)], 2, skips=[(0, 5)])
    with pytest.raises(ValueError, match="skips: no average pool"):
        CRNN((1, 9, 9), [Conv(3, pool=False), Conv(3, kernel_size=5, padding=0, pool=False),
                         Conv(2, pool=False)], 2, skips=[(0, 2)])  # 9×9 → 5×5: no integer factor
    for p in (-0.1, 1.5):
        with pytest.raises(ValueError, match="p must be a probability in \\[0, 1\\]"):
            random_skips(5, p)
    with pytest.raises(ValueError, match="every must be"):
        residual_skips(5, 1)
    model = CRNN((8,), [Linear(5), Linear(3)], 2)
    x, y = torch.randn(2, 8), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="unknown rule 'hebb'"):
        ep_gradients(model, x, y, beta=0.1, t_free=2, t_nudge=2, rule="hebb")
    from eqkern.model.auxiliary import LocalError

    le = CRNN((8,), [Linear(5), Linear(3)], 2, augment=LocalError((0,)))
    with pytest.raises(ValueError, match="rule='fre' is for symmetric models without LE/KD"):
        ep_gradients(le, x, y, beta=0.1, t_free=2, t_nudge=2, rule="fre")
    sep = CRNN((8,), [Linear(5), Linear(3)], 2, feedback="separate")
    with pytest.raises(ValueError, match="rule='fre' is for symmetric models"):
        ep_gradients(sep, x, y, beta=0.1, t_free=2, t_nudge=2, rule="fre")
    with pytest.raises(ValueError, match="rule must be one of"):
        get_preset("frernn-mlp2-mnist", rule="hebb")
    with pytest.raises(ValueError, match="skips must be one of"):
        get_preset("frernn-mlp2-mnist", skips="ring")
    with pytest.raises(ValueError, match="p must be a probability"):
        get_preset("frernn-mlp10-agt-mnist", skip_p=2.0)


def test_skip_links_with_the_alternating_schedule_refused_where_missing(monkeypatch):
    """torch/triton have no skip terms in their alternating order: by name an error, by default
    a backend that has them (reference: the gradient of the whole extended Φ, or cpp)."""
    from eqkern import settle
    monkeypatch.delenv("EQKERN_BACKEND", raising=False)
    model = CRNN((8,), [Linear(5), Linear(4), Linear(3)], 2, skips=[(0, 2)])
    x = torch.randn(2, 8)
    with pytest.raises(ValueError, match="schedule='alternating'"):
        settle(model, x, model.init_state(2), 0.0, 2, backend="torch", schedule="alternating")
    assert get_backend(None, torch.device("cpu"), model, schedule="alternating").name in (
        "reference", "cpp")
    assert get_backend(None, torch.device("cpu"), model).name in ("cpp", "torch")
