"""Fewer settling steps: the alternating schedule, the convergence stop and the batched ±β phases.

(``tests/training/test_kappa.py`` is about the κ and learning-rate schedules, not these.)

* alternating: ``torch`` and ``triton`` against ``reference`` (the autograd of Φ_β, even layers
  then odd ones), and ``reference`` itself against its definition built from synchronous steps;
* the convergence stop: fewer steps than the cap, the same state as that many fixed steps,
  never more than the cap;
* the ±β phases as one batch of 2B: the same gradients as one after the other;
* EP with the alternating schedule against BPTT unrolled with it (GDU).
"""

from __future__ import annotations

import logging

import pytest
import torch

import cases
from cases import CASES, check_states_match, ep_grads
from conftest import rel_rms, require_triton
from eqkern import CRNN, Conv, Linear, bptt_gradients, check_gdu, ep_gradients, free_phase, settle
from eqkern.model import energy
from eqkern.model.auxiliary import Distill, LocalError, Targets
from eqkern.training.presets import get_preset

# The interpreter costs ~30 ms per launch: the triton runs use short phases and a few cases.
TRITON_CASES = [CASES[0], CASES[2], CASES[5]]


@pytest.fixture
def short_phases(monkeypatch):
    monkeypatch.setattr(cases, "T_FREE", 4)
    monkeypatch.setattr(cases, "T_NUDGE", 2)


# -- the alternating schedule ---------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
@pytest.mark.vs_reference
@pytest.mark.slow_in_interpreter
def test_alternating_matches_reference(backend, case, dtype):
    check_states_match(case.build(dtype), backend, f"{backend} alternating {case.id} {dtype}",
                       schedule="alternating")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.vs_reference
@pytest.mark.slow_in_interpreter
def test_alternating_separate_feedback_matches_reference(backend, dtype):
    """The alternating order with Laborieux's vector field (B_l and its own pool indices)."""
    case = CASES[0]
    torch.manual_seed(0)
    model = CRNN(case.input_shape, case.layers, case.num_classes, case.readout, feedback="separate",
                 **case.kwargs).to(dtype)
    x = torch.rand(case.batch, *case.input_shape, dtype=dtype)
    y = torch.randint(0, case.num_classes, (case.batch,))
    check_states_match((model, x, y), backend, f"{backend} alternating separate {dtype}",
                       schedule="alternating")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("case", TRITON_CASES, ids=[c.id for c in TRITON_CASES])
def test_alternating_triton_matches_reference(case, dtype, short_phases, request):
    require_triton(request)
    check_states_match(case.build(dtype), "triton", f"triton alternating {case.id} {dtype}",
                       schedule="alternating")


@pytest.mark.parametrize("case", [CASES[0], CASES[5]], ids=[CASES[0].id, CASES[5].id])
def test_reference_alternating_is_even_then_odd(case):
    """One alternating step equals: a synchronous step's even layers, then a synchronous step
    (from the state with the new even layers) for the odd layers. Nudged, so the read-out term of
    the top layer is covered too."""
    model, x, y = case.build(torch.float64)
    start = [torch.rand_like(s) for s in model.init_state(x.shape[0], like=x)]
    alt = settle(model, x, [s.clone() for s in start], 0.5, 1, y, backend="reference",
                 schedule="alternating")
    first = settle(model, x, [s.clone() for s in start], 0.5, 1, y, backend="reference")
    mid = [first[i] if i % 2 == 0 else start[i] for i in range(len(start))]
    second = settle(model, x, [s.clone() for s in mid], 0.5, 1, y, backend="reference")
    expected = [mid[i] if i % 2 == 0 else second[i] for i in range(len(start))]
    for i, (e, a) in enumerate(zip(expected, alt)):
        err = rel_rms(e, a)
        print(f"{case.id} layer {i}: rel RMS {err:.2e}")
        assert err <= 1e-14


@pytest.mark.slow_in_interpreter
def test_synchronous_is_the_default_and_unchanged(backend):
    """``schedule="synchronous"`` is bit-identical to the default, and equals a synchronous step
    written out from the model's pieces (every layer from the old state)."""
    model, x, y = CASES[5].build(torch.float64)
    start = [torch.rand_like(s) for s in model.init_state(x.shape[0], like=x)]
    default = settle(model, x, [s.clone() for s in start], 0.5, 1, y, backend=backend)
    named = settle(model, x, [s.clone() for s in start], 0.5, 1, y, backend=backend,
                   schedule="synchronous")
    assert all(torch.equal(a, b) for a, b in zip(default, named))
    from eqkern.model.activations import activate

    for i, spec in enumerate(model.specs):
        s_in = x if i == 0 else start[i - 1]
        total = spec.alpha * energy.drive(model, i, s_in)[0]
        if i + 1 < len(start):
            idx = energy.drive(model, i + 1, start[i])[1]
            total = total + spec.gamma * energy.feedback(model, i + 1, start[i + 1], idx, start[i].shape)
        nudge = energy.layer_nudge(model, i, start[i], y, 0.5)
        total = total if nudge is None else total + nudge
        err = rel_rms(activate(spec.activation, total), default[i])
        print(f"{backend} synchronous layer {i}: rel RMS {err:.2e}")
        assert err <= 1e-14


def test_alternating_differs_from_synchronous_after_one_step():
    """On a 3-layer net the odd layer reads the new even ones: one step already differs."""
    model, x, y = CASES[0].build(torch.float64)
    assert model.num_layers >= 3
    start = [torch.rand_like(s) for s in model.init_state(x.shape[0], like=x)]
    sync = settle(model, x, [s.clone() for s in start], 0.0, 1, backend="torch")
    alt = settle(model, x, [s.clone() for s in start], 0.0, 1, backend="torch",
                 schedule="alternating")
    diffs = [(a - b).abs().max().item() for a, b in zip(sync, alt)]
    print(f"max |sync - alt| per layer after one step: {diffs}")
    assert diffs[0] == 0.0 and diffs[2] == 0.0  # even layers: the same old state
    assert diffs[1] > 1e-6


@pytest.mark.slow_in_interpreter
def test_alternating_converges_to_the_synchronous_fixed_point(backend):
    """Both schedules iterate the same fixed-point map ρ(∂Φ/∂s), so they end at the same state."""
    torch.manual_seed(3)
    model = CRNN((1, 8, 8), [Conv(3), Conv(4), Linear(5)], 4, init_scale=0.5).double()
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    ends, used = {}, {}
    for schedule in ("synchronous", "alternating"):
        state = model.init_state(2, like=x)
        ends[schedule], used[schedule] = settle(model, x, state, 0.0, 2000, backend=backend,
                                                schedule=schedule, tol=1e-10, check_every=1,
                                                return_steps=True)
    err = max((a - b).abs().max().item() for a, b in zip(ends["synchronous"], ends["alternating"]))
    print(f"{backend}: steps {used}, max |sync - alt| at the end {err:.2e}")
    assert max(used.values()) < 2000
    assert err <= 1e-8


# -- the convergence stop ---------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["synchronous", "alternating"])
@pytest.mark.slow_in_interpreter
def test_stop_uses_fewer_steps_and_equals_that_many_steps(backend, schedule, caplog):
    model, x, y = CASES[0].build(torch.float64)
    cap = 200
    state = model.init_state(x.shape[0], like=x)
    with caplog.at_level(logging.DEBUG, logger="eqkern"):
        out, used = settle(model, x, state, 0.0, cap, backend=backend, schedule=schedule,
                           tol=1e-6, check_every=7, return_steps=True)
    print(f"{backend} {schedule}: stopped after {used} of {cap} steps")
    assert out is state
    assert 0 < used < cap and used % 7 == 0
    assert f"used {used} of {cap} steps" in caplog.text
    fixed = settle(model, x, model.init_state(x.shape[0], like=x), 0.0, used, backend=backend,
                   schedule=schedule)
    assert all(torch.equal(a, b) for a, b in zip(out, fixed))
    # and the last step did move less than tol, the one before the last check did not
    one_more = settle(model, x, [s.clone() for s in out], 0.0, 1, backend=backend, schedule=schedule)
    assert max((a - b).abs().max().item() for a, b in zip(one_more, out)) < 1e-6


@pytest.mark.parametrize("cap,check_every", [(23, 10), (5, 10), (9, 1)])
def test_stop_never_exceeds_the_cap(cap, check_every):
    """A tol that is never reached runs exactly ``cap`` steps (the last check may be short)."""
    model, x, y = CASES[2].build(torch.float64)
    state, used = settle(model, x, model.init_state(x.shape[0], like=x), 0.5, cap, y,
                         backend="torch", tol=1e-300, check_every=check_every, return_steps=True)
    fixed = settle(model, x, model.init_state(x.shape[0], like=x), 0.5, cap, y, backend="torch")
    print(f"cap {cap}, check_every {check_every}: used {used}")
    assert used == cap
    assert all(torch.equal(a, b) for a, b in zip(state, fixed))


def test_ep_reports_the_steps_it_used():
    model, x, y = CASES[0].build(torch.float64)
    res = ep_gradients(model, x, y, beta=0.5, t_free=300, t_nudge=100, backend="torch",
                       tol=1e-6, check_every=5)
    print(f"free {res.free_steps}, nudge {res.nudge_steps}, total {res.settle_steps}")
    assert 0 < res.free_steps < 300 and 0 < res.nudge_steps < 100
    assert res.free_steps <= res.settle_steps <= res.free_steps + 2 * res.nudge_steps
    fixed = ep_gradients(model, x, y, beta=0.5, t_free=30, t_nudge=10, backend="torch")
    assert (fixed.free_steps, fixed.nudge_steps, fixed.settle_steps) == (30, 10, 50)
    state, used = free_phase(model, x, 300, backend="torch", tol=1e-6, check_every=5,
                             return_steps=True)
    assert used == res.free_steps


# -- the ±β phases as one batch ------------------------------------------------------------------------


def _augmented(kind: str, dtype: torch.dtype):
    aug = LocalError((0, 1)) if kind == "le" else Distill((0, 1))
    model = CRNN((2, 9, 9), [Conv(3), Conv(4, padding=0), Linear(5)], 4, augment=aug).to(dtype)
    model.kappa = 0.6
    x = torch.rand(3, 2, 9, 9, dtype=dtype)
    y = torch.randint(0, 4, (3,))
    if kind == "kd":
        y = Targets(y, [torch.randn(3, *model.state_shapes[i], dtype=dtype) for i in (0, 1)])
    return model, x, y


MODELS = {
    "ce": lambda dtype: CASES[0].build(dtype),
    "mse": lambda dtype: CASES[2].build(dtype),
    "le": lambda dtype: _augmented("le", dtype),
    "kd": lambda dtype: _augmented("kd", dtype),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("kind", list(MODELS))
def test_batched_nudge_equals_sequential(backend, kind, dtype, monkeypatch):
    if backend == "triton":  # the interpreter is slow: short phases
        monkeypatch.setattr(cases, "T_FREE", 4)
        monkeypatch.setattr(cases, "T_NUDGE", 2)
    model, x, y = MODELS[kind](dtype)
    seq = ep_grads(model, x, y, backend)
    bat = ep_grads(model, x, y, backend, batched_nudge=True)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for name in seq:
        err = rel_rms(seq[name], bat[name])
        print(f"{backend} {kind} {dtype} {name}: batched vs sequential rel RMS {err:.2e}")
        assert err <= tol


def test_batched_nudge_with_alternating_and_stop_equals_sequential():
    """Batched ±β composes with the alternating schedule; with a stop both halves share the
    larger step count, so the comparison holds when neither half stops early (tol unreachable)."""
    model, x, y = CASES[5].build(torch.float64)
    opts = {"schedule": "alternating", "tol": 1e-300, "check_every": 3}
    seq = ep_grads(model, x, y, "torch", **opts)
    bat = ep_grads(model, x, y, "torch", batched_nudge=True, **opts)
    for name in seq:
        err = rel_rms(seq[name], bat[name])
        print(f"{name}: rel RMS {err:.2e}")
        assert err <= 1e-12


def test_per_sample_beta_settles_each_sample_at_its_beta(backend):
    """settle with a (batch,) β equals settling each sample with its own float β."""
    model, x, y = CASES[0].build(torch.float64)
    betas = torch.tensor([0.5, -0.5, 0.2], dtype=torch.float64)
    start = [torch.rand_like(s) for s in model.init_state(x.shape[0], like=x)]
    out = settle(model, x, [s.clone() for s in start], betas, 3, y, backend=backend)
    for b in range(3):
        one = settle(model, x[b:b + 1], [s[b:b + 1].clone() for s in start], float(betas[b]),
                     3, y[b:b + 1], backend=backend)
        err = max(rel_rms(o, s[b:b + 1]) for o, s in zip(one, out))
        print(f"{backend} sample {b}: rel RMS {err:.2e}")
        assert err <= 1e-12


# -- GDU with the alternating schedule ------------------------------------------------------------


def test_alternating_ep_matches_bptt_alternating():
    torch.manual_seed(5)
    model = CRNN((1, 8, 8), [Conv(4), Conv(5), Linear(6)], 4).double()
    x = torch.rand(4, 1, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 4, (4,))
    rows = check_gdu(model, x, y, beta=0.01, t_free=60, t_nudge=15, backend="torch",
                     schedule="alternating")
    for r in rows:
        print(f"{r['name']}: cosine {r['cosine']:.6f} rel error {r['rel_error']:.2e}")
    assert min(r["cosine"] for r in rows) >= 0.99


def test_bptt_unrolls_the_schedule():
    """BPTT's final state is the schedule's own free phase (so GDU compares like with like)."""
    model, x, y = CASES[0].build(torch.float64)
    for schedule in ("synchronous", "alternating"):
        res = bptt_gradients(model, x, y, t_free=12, truncate=5, schedule=schedule)
        ref = settle(model, x, model.init_state(x.shape[0], like=x), 0.0, 12, backend="reference",
                     schedule=schedule)
        err = max(rel_rms(r, s) for r, s in zip(ref, res.final_state))
        print(f"{schedule}: rel RMS {err:.2e}")
        assert err <= 1e-12


# -- bad input -------------------------------------------------------------------------------------


def test_bad_arguments_name_themselves():
    model, x, y = CASES[0].build(torch.float32)
    state = model.init_state(x.shape[0], like=x)
    with pytest.raises(ValueError, match="schedule"):
        settle(model, x, state, 0.0, 2, backend="torch", schedule="jacobi")
    with pytest.raises(ValueError, match="schedule"):
        ep_gradients(model, x, y, beta=0.5, t_free=2, t_nudge=1, schedule="odd-even")
    with pytest.raises(ValueError, match="schedule"):
        bptt_gradients(model, x, y, t_free=2, schedule="jacobi")
    for tol in (0.0, -1e-4, float("nan")):
        with pytest.raises(ValueError, match="tol"):
            settle(model, x, state, 0.0, 2, backend="torch", tol=tol)
        with pytest.raises(ValueError, match="tol"):
            ep_gradients(model, x, y, beta=0.5, t_free=2, t_nudge=1, tol=tol)
    for k in (0, -3, 2.5):
        with pytest.raises(ValueError, match="check_every"):
            settle(model, x, state, 0.0, 2, backend="torch", tol=1e-4, check_every=k)
        with pytest.raises(ValueError, match="check_every"):
            free_phase(model, x, 2, tol=1e-4, check_every=k)
    with pytest.raises(ValueError, match="beta"):
        settle(model, x, state, torch.ones(x.shape[0] + 1), 2, y, backend="torch")
    for key, value in (("schedule", "jacobi"), ("tol", 0.0), ("check_every", 0)):
        with pytest.raises(ValueError, match=key):
            get_preset("vgg5-ce-cifar10", **{key: value})


def test_preset_fields_reach_training():
    p = get_preset("vgg5-ce-cifar10", schedule="alternating", tol=1e-4, check_every=5,
                   batched_nudge=True)
    assert (p.schedule, p.tol, p.check_every, p.batched_nudge) == ("alternating", 1e-4, 5, True)
    from eqkern.training.presets import parse_overrides

    assert parse_overrides(["schedule=alternating", "tol=1e-4", "batched_nudge=true"], p) == {
        "schedule": "alternating", "tol": 1e-4, "batched_nudge": True}
