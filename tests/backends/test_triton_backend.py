"""The ``triton`` backend against ``reference``: whole phases, EP gradients, the GDU check.

The same cases and bounds as tests/backends/test_backends.py (cases.py), with shorter phases on CPU: the
interpreter costs about 30 ms per launch and a step is two launches per layer, so the 20 + 8 steps
of test_backends.py would take minutes. A short phase still runs every kernel in every step and
checks the states step for step; the full-length phases run on a GPU (``gpu`` marker below).
"""

from __future__ import annotations


import pytest
import torch

import cases
from cases import CASES, check_grads_match, check_states_match
from conftest import rel_rms, require_triton
from eqkern import CRNN, Conv, Linear, check_gdu

SHORT_T_FREE, SHORT_T_NUDGE = 4, 2


@pytest.fixture(autouse=True)
def _triton_available(request):
    require_triton(request)


@pytest.fixture
def short_phases(monkeypatch):
    monkeypatch.setattr(cases, "T_FREE", SHORT_T_FREE)
    monkeypatch.setattr(cases, "T_NUDGE", SHORT_T_NUDGE)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_states_match_reference(case, dtype, short_phases):
    check_states_match(case.build(dtype), "triton", f"triton {case.id} {dtype}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_gradients_match_reference(case, dtype, short_phases):
    """The symmetric three-phase estimate: every conv/FC weight and bias through the Hebbian kernel."""
    check_grads_match(case.build(dtype), "triton", "symmetric", f"triton {case.id} {dtype}")


@pytest.mark.parametrize("case", [CASES[0], CASES[1]], ids=[CASES[0].id, CASES[1].id])
def test_one_sided_gradients_match_reference(case, short_phases):
    check_grads_match(case.build(torch.float64), "triton", "one_sided", f"triton {case.id} fp64")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_low_precision_storage_tracks_fp64(dtype, short_phases):
    """fp16/bf16 states: the kernels compute in fp32 and round once per store, so the phase stays
    within a few storage ulps of the fp64 reference run on the same model."""
    model, x, y = CASES[0].build(torch.float64)
    ref = cases.run_phases(model, x, y, "reference")
    out = cases.run_phases(model.to(dtype), x.to(dtype), y, "triton")
    tol = {torch.float16: 5e-3, torch.bfloat16: 4e-2}[dtype]
    for r_phase, o_phase in zip(ref, out):
        for i, (r, o) in enumerate(zip(r_phase, o_phase)):
            err = rel_rms(r, o)
            print(f"triton {dtype} state[{i}] rel RMS vs fp64 reference {err:.2e}")
            assert o.dtype == dtype and err <= tol


def test_non_contiguous_state_is_updated_in_place():
    model, x, y = CASES[1].build(torch.float64)
    torch.manual_seed(3)
    base = [torch.rand(s.shape[1], s.shape[0], *s.shape[2:], dtype=torch.float64).transpose(0, 1)
            for s in model.init_state(x.shape[0], like=x)]
    expected = [s.clone() for s in base]
    from eqkern import settle

    settle(model, x, expected, 0.5, 3, y, backend="reference")
    out = settle(model, x, base, 0.5, 3, y, backend="triton")
    assert all(o is b for o, b in zip(out, base))
    for e, o in zip(expected, base):
        assert rel_rms(e, o) <= 1e-12


@pytest.mark.parametrize("aug_id", ["le", "kdw"])
def test_augmented_nudges(aug_id, short_phases):
    """LE/KD(W) nudge terms go through the same epilogue (``energy.layer_nudge``) and the aux maps
    through the analytic update: triton matches reference on augmented models."""
    from cases import build_augmented as build

    check_states_match(build(aug_id, torch.float64), "triton", f"triton {aug_id} fp64")
    check_grads_match(build(aug_id, torch.float64), "triton", "symmetric", f"triton {aug_id} fp64")


def test_gdu_small_model():
    """EP on triton matches BPTT (GDU) on a small fp64 network with every kind of layer."""
    model = CRNN((1, 8, 8), [Conv(3), Conv(4, pool=False), Linear(6)], 4).double()
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 4, (4,))
    kw = dict(beta=1e-3, t_free=16, t_nudge=6)  # this small net settles in ~15 steps
    rows = check_gdu(model, x, y, backend="triton", **kw)
    torch_rows = check_gdu(model, x, y, backend="torch", **kw)
    for r, t in zip(rows, torch_rows):
        print(f"triton {r['name']}: cosine {r['cosine']:.8f} rel {r['rel_error']:.2e} "
              f"(torch backend rel {t['rel_error']:.2e})")
        assert r["cosine"] >= 0.99
        assert r["rel_error"] <= 1e-4
        assert abs(r["ep_norm"] - t["ep_norm"]) <= 1e-10 * t["ep_norm"]


# -- GPU: the full-length phases of test_backends.py and the GDU test of test_gdu.py -------------

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def no_tf32(monkeypatch):
    """cuDNN convolutions default to TF32 on CUDA, which would make the fp32 *reference* inexact."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)


def _on_cuda(built):
    model, x, y = built
    return model.cuda(), x.cuda(), y.cuda()


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_full_phases_on_gpu(case, dtype, no_tf32):
    check_states_match(_on_cuda(case.build(dtype)), "triton", f"triton cuda {case.id} {dtype}")
    check_grads_match(_on_cuda(case.build(dtype)), "triton", "symmetric",
                      f"triton cuda {case.id} {dtype}")


@pytest.mark.gpu
@gpu
def test_gdu_on_gpu(no_tf32):
    model = CRNN((1, 12, 12), [Conv(4), Conv(6), Linear(10)], 5).double().cuda()
    x = torch.randn(8, 1, 12, 12, dtype=torch.float64).cuda()
    y = torch.randint(0, 5, (8,)).cuda()
    for r in check_gdu(model, x, y, beta=1e-3, t_free=150, t_nudge=30, backend="triton"):
        assert r["cosine"] >= 0.99 and r["rel_error"] <= 1e-4
