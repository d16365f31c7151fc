"""Mixed precision (eqkern.backends.precision): a bf16 / fp16 model settles and forms the EP
estimate in fp32, so its gradients match fp64's per layer (cosine >= 0.999) on every CPU
backend, come back in the parameters' dtype, and torch.autocast is refused with a clear error.

The weights and the input are rounded to bf16 once, so fp64 and every half dtype hold the same
numbers and the cosine measures the arithmetic alone. Triton runs here only under the interpreter
with tiny shapes (the GPU fp16/bf16 kernels are tests/backends/test_triton_backend.py's).
"""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import require_backend, require_triton
from eqkern import CRNN, Conv, Linear, bptt_gradients, ep_gradients, free_phase, settle
from eqkern.backends import precision
from eqkern.errors import ArgumentError

HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}
# All three run on every CI machine: a missing one fails (conftest.require_backend), not skips.
CPU_BACKENDS = ["reference", "torch", "cpp"]
COS_MIN = 0.999
EP = {"beta": 0.2, "t_free": 40, "t_nudge": 15}


def _net(kind: str, dtype: torch.dtype = torch.float64):
    torch.manual_seed(0)
    if kind == "mlp":
        model, shape = CRNN((1, 28, 28), [Linear(64), Linear(32)], 10), (1, 28, 28)
    elif kind == "tiny":
        model, shape = CRNN((1, 8, 8), [Conv(3), Linear(5)], 4), (1, 8, 8)
    else:  # a conv net whose first layer's EP signal is small next to its states (hard for bf16)
        model, shape = CRNN((1, 16, 16), [Conv(8), Conv(16), Linear(32)], 10), (1, 16, 16)
    x = torch.rand(8, *shape)
    y = torch.randint(0, model.num_classes, (8,))
    model = model.to(torch.bfloat16).to(dtype)
    return model, x.to(torch.bfloat16).to(dtype), y


def _layer_grads(model, x, y, backend, **options):
    model.zero_grad(set_to_none=True)
    result = ep_gradients(model, x, y, backend=backend, **{**EP, **options})
    return result, [torch.cat([m.weight.grad.flatten(), m.bias.grad.flatten()])
                    for m in model.weight_layers()]


def _cosines(truth, grads):
    return [float(torch.nn.functional.cosine_similarity(t.double(), g.double(), dim=0))
            for t, g in zip(truth, grads)]


@pytest.mark.parametrize("kind", ["mlp", "conv"])
@pytest.mark.parametrize("half", list(HALF))
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_half_ep_gradients_match_fp64(backend, half, kind):
    require_backend(backend)
    model64, x64, y = _net(kind)
    _, truth = _layer_grads(model64, x64, y, backend)
    model = copy.deepcopy(model64).to(HALF[half])
    result, grads = _layer_grads(model, x64.to(HALF[half]), y, backend)
    with precision.storage_arithmetic():  # what eqkern computed before: shows what the test sees
        _, before = _layer_grads(copy.deepcopy(model64).to(HALF[half]), x64.to(HALF[half]), y, backend)
    cos, cos_before = _cosines(truth, grads), _cosines(truth, before)
    print(f"{kind} {backend} {half}: per-layer cosine vs fp64 {[f'{c:.5f}' for c in cos]} "
          f"(storage-dtype arithmetic: {[f'{c:.5f}' for c in cos_before]})")
    for p in model.parameters():
        assert p.grad.dtype == HALF[half] and p.dtype == HALF[half]
        assert torch.isfinite(p.grad).all()
    assert all(s.dtype == HALF[half] for s in result.free_state)
    assert min(cos) >= COS_MIN


def test_fp32_accumulation_is_what_fixes_bf16():
    """The check above can fail: in bf16 arithmetic the first conv layer is far off."""
    model64, x64, y = _net("conv")
    _, truth = _layer_grads(model64, x64, y, "torch")
    with precision.storage_arithmetic():
        _, grads = _layer_grads(copy.deepcopy(model64).to(torch.bfloat16),
                                x64.to(torch.bfloat16), y, "torch")
    cos = _cosines(truth, grads)
    print(f"bf16 arithmetic: {cos}")
    assert min(cos) < COS_MIN


@pytest.mark.parametrize("options", [{"rule": "fre", "estimator": "one_sided"},
                                     {"batched_nudge": True}, {"tol": 1e-4}],
                         ids=["fre", "batched", "tol"])
def test_half_rules_and_options(options):
    model64, x64, y = _net("conv")
    _, truth = _layer_grads(model64, x64, y, "torch", **options)
    model = copy.deepcopy(model64).to(torch.bfloat16)
    _, grads = _layer_grads(model, x64.to(torch.bfloat16), y, "torch", **options)
    cos = _cosines(truth, grads)
    print(f"{options}: {cos}")
    assert min(cos) >= COS_MIN


def test_half_separate_feedback():
    torch.manual_seed(0)
    model64 = CRNN((1, 12, 12), [Conv(4), Conv(6), Linear(8)], 5, feedback="separate")
    model64 = model64.to(torch.bfloat16).double()
    x64, y = torch.rand(6, 1, 12, 12).to(torch.bfloat16).double(), torch.randint(0, 5, (6,))
    grads = {}
    for dtype in (torch.float64, torch.bfloat16):
        model = copy.deepcopy(model64).to(dtype)
        ep_gradients(model, x64.to(dtype), y, backend="torch", rule="kp-vf", leakage=0.01, **EP)
        grads[dtype] = [p.grad.flatten() for p in model.parameters()]
        assert all(p.grad.dtype == dtype for p in model.parameters())
    cos = _cosines(grads[torch.float64], grads[torch.bfloat16])
    print(f"separate feedback kp-vf bf16: {cos}")
    assert min(cos) >= COS_MIN


def test_half_bptt_and_free_phase():
    model64, x64, y = _net("conv")
    model = copy.deepcopy(model64).to(torch.bfloat16)
    x = x64.to(torch.bfloat16)
    for m in (model64, model):
        res = bptt_gradients(m, x64.to(m.connections[0].weight.dtype), y, t_free=20)
    assert all(s.dtype == torch.bfloat16 for s in res.final_state)
    cos = _cosines([p.grad.flatten() for p in model64.parameters()],
                   [p.grad.flatten() for p in model.parameters()])
    print(f"bptt bf16: {cos}")
    assert all(p.grad.dtype == torch.bfloat16 for p in model.parameters())
    assert min(cos) >= COS_MIN
    state = free_phase(model, x, 20, backend="torch")
    assert all(s.dtype == torch.bfloat16 for s in state)
    assert model(x).dtype == torch.bfloat16
    # settle is in place on the caller's bf16 tensors; the parameters are bf16 again afterwards
    state = model.init_state(x.shape[0], like=x)
    out = settle(model, x, state, 0.0, 5, backend="torch")
    assert out is state and state[0].abs().sum() > 0
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())


@pytest.mark.parametrize("backend", CPU_BACKENDS + ["triton"])
def test_autocast_is_refused(backend, request):
    if backend == "triton":
        require_triton(request)
    else:
        require_backend(backend)
    model, x, y = _net("tiny", torch.float32)
    calls = {
        "ep_gradients": lambda: ep_gradients(model, x, y, backend=backend, beta=0.2, t_free=2, t_nudge=1),
        "settle": lambda: settle(model, x, model.init_state(x.shape[0]), 0.0, 2, backend=backend),
        "free_phase": lambda: free_phase(model, x, 2, backend=backend),
        "forward": lambda: model(x, 2, backend=backend),
    }
    if backend == "torch":
        calls["bptt_gradients"] = lambda: bptt_gradients(model, x, y, t_free=2)
    for name, call in calls.items():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            with pytest.raises(ArgumentError, match=r"torch\.autocast.*model\.to\(torch\.bfloat16\)"):
                call()
        print(f"{backend} {name}: refused under autocast")
    assert all(p.grad is None for p in model.parameters())
    free_phase(model, x, 2, backend=backend)  # and runs outside it


def test_triton_interpreter_bf16(request):
    require_triton(request)
    model64, x64, y = _net("tiny")
    small = {"beta": 0.2, "t_free": 6, "t_nudge": 3}
    model64.zero_grad()
    ep_gradients(model64, x64[:2], y[:2], backend="reference", **small)
    model = copy.deepcopy(model64).to(torch.bfloat16)
    model.zero_grad(set_to_none=True)
    ep_gradients(model, x64[:2].to(torch.bfloat16), y[:2], backend="triton", **small)
    cos = _cosines([p.grad.flatten() for p in model64.parameters()],
                   [p.grad.flatten() for p in model.parameters()])
    print(f"triton (interpreter) bf16: {cos}")
    assert all(p.grad.dtype == torch.bfloat16 for p in model.parameters())
    assert min(cos) >= COS_MIN
