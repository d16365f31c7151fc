"""eqkern::settle_epilogue_ (C++/CUDA) against its pure-torch reference ``settle_epilogue_ref``."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import pytest
import torch

from eqkern.kernels import native as _build
from eqkern.kernels import ops
from eqkern.model.activations import ACTIVATION_CODES

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA GPU")]),
]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# The kernels compute 16-bit inputs in float32 and round once, so they are compared with the
# reference run in float32 on the same (upcast) values and then rounded: at most 1 ulp apart.
# rtol = 1 ulp of the dtype (2^-10 fp16, 2^-7 bf16); fp32/fp64 allow libm-vs-ATen tanh and FMA.
TOL = {  # dtype: (atol, rtol)
    torch.float64: (1e-12, 1e-12),
    torch.float32: (1e-6, 2e-6),
    torch.float16: (1e-5, 1e-3),
    torch.bfloat16: (1e-5, 8e-3),
}


@dataclass(frozen=True)
class Case:
    shape: tuple[int, ...]
    top_down: bool = True
    nudge: bool = True
    strided: bool = False  # state and inputs are non-contiguous views of bigger buffers
    alpha: float = 0.7
    gamma: float = 1.3


CASES = {
    "odd-2d": Case((5, 33)),
    "batch1": Case((1, 7)),
    "conv-odd-no-topdown": Case((3, 5, 9, 11), top_down=False),
    "no-nudge": Case((4, 129), nudge=False, alpha=1.0, gamma=0.5),
    "neither": Case((2, 151), top_down=False, nudge=False),
    "strided": Case((6, 37), strided=True),
    "strided-4d-no-nudge": Case((2, 3, 7, 5), nudge=False, strided=True),
    "parallel-chunks": Case((3, 40_000)),  # > 32768 elements: several at::parallel_for tasks
    "empty": Case((0, 8)),
}


def _operand(shape: tuple[int, ...], dtype: torch.dtype, device: str, strided: bool, kind: int) -> torch.Tensor:
    """randn*2 (so clamps saturate on both sides), contiguous or one of three strided layouts."""
    if not strided:
        return (2 * torch.randn(shape, device=device)).to(dtype)
    if kind == 0:  # every other element of the last dim
        return (2 * torch.randn(*shape[:-1], 2 * shape[-1], device=device)).to(dtype)[..., ::2]
    if kind == 1:  # a slice of a wider buffer (causal-conv1d style)
        return (2 * torch.randn(*shape[:-1], shape[-1] + 64, device=device)).to(dtype)[..., 32:32 + shape[-1]]
    return (2 * torch.randn(tuple(reversed(shape)), device=device)).to(dtype).permute(
        *reversed(range(len(shape))))  # a transpose


def _inputs(case: Case, dtype: torch.dtype, device: str):
    bu = _operand(case.shape, dtype, device, case.strided, 1)
    td = _operand(case.shape, dtype, device, case.strided, 2) if case.top_down else None
    nd = _operand(case.shape, dtype, device, case.strided, 0) if case.nudge else None
    if case.strided:  # a state interleaved with sentinels that the op must leave alone
        buf = torch.full((*case.shape[:-1], 2 * case.shape[-1]), 7.0, dtype=dtype, device=device)
        state = buf[..., ::2]
        assert not state.is_contiguous()
    else:
        buf = None
        state = torch.full(case.shape, float("nan"), dtype=dtype, device=device)  # old value unused
    return state, buf, bu, td, nd


def _up(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """On CPU in ``dtype``: the references run there, so a GPU run is not checked by the GPU."""
    return None if t is None else t.cpu().to(dtype)


def test_cpp_extension_loaded() -> None:
    # Everything below needs eqkern._C; say why it is missing rather than skipping.
    print("cpp_load_error:", _build.cpp_load_error())
    assert _build.cpp_available(), _build.cpp_load_error()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", list(CASES), ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("activation", list(ACTIVATION_CODES))
def test_matches_reference(activation: str, dtype: torch.dtype, case: str, device: str) -> None:
    c = CASES[case]
    torch.manual_seed(zlib.crc32(f"{activation}/{case}".encode()))  # stable across runs
    state, buf, bu, td, nd = _inputs(c, dtype, device)
    ref_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    ref = ops.settle_epilogue_ref(_up(state, ref_dtype), _up(bu, ref_dtype), _up(td, ref_dtype),
                                  _up(nd, ref_dtype), c.alpha, c.gamma, activation).to(dtype)

    ops.settle_epilogue_(state, bu, td, nd, c.alpha, c.gamma, activation)

    atol, rtol = TOL[dtype]
    diff = (state.cpu().double() - ref.double()).abs()
    print(f"{activation} {dtype} {case} {device}: max abs diff {diff.max().item() if diff.numel() else 0:.3e}")
    assert not state.isnan().any(), "NaN in the output"
    torch.testing.assert_close(state.cpu(), ref, atol=atol, rtol=rtol)
    if buf is not None:
        gaps = buf[..., 1::2]
        assert (gaps == 7.0).all(), "the op wrote outside the strided state"


@pytest.mark.parametrize("device", DEVICES)
def test_same_dtype_reference_fp32(device: str) -> None:
    # The plain same-dtype reference is what the torch backend computes; in fp32 they agree.
    state, _, bu, td, nd = _inputs(Case((8, 65)), torch.float32, device)
    f32 = torch.float32
    ref = ops.settle_epilogue_ref(_up(state, f32), _up(bu, f32), _up(td, f32), _up(nd, f32), 0.5, 2.0, "hard_sigmoid")
    ops.settle_epilogue_(state, bu, td, nd, 0.5, 2.0, "hard_sigmoid")
    print("max abs diff", (state.cpu() - ref).abs().max().item())
    torch.testing.assert_close(state.cpu(), ref)


@pytest.mark.gpu
# Marks apply bottom-up: without any GPU the skip reason is the standard one.
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_launches_on_the_state_device() -> None:
    # The op's CUDAGuard: tensors on cuda:1 while cuda:0 is current run on cuda:1 (a launch on
    # cuda:0 would fault or leave state unwritten), and the current device stays cuda:0.
    c = Case((4, 1000))
    with torch.cuda.device(0):
        state, _, bu, td, nd = _inputs(c, torch.float32, "cuda:1")
        ops.settle_epilogue_(state, bu, td, nd, c.alpha, c.gamma, "tanh")
        torch.cuda.synchronize(1)
        assert torch.cuda.current_device() == 0
    f32 = torch.float32
    ref = ops.settle_epilogue_ref(_up(state, f32), _up(bu, f32), _up(td, f32), _up(nd, f32), c.alpha, c.gamma, "tanh")
    print("max abs diff", (state.cpu() - ref).abs().max().item())
    torch.testing.assert_close(state.cpu(), ref, atol=TOL[f32][0], rtol=TOL[f32][1])


def test_inputs_may_alias_state() -> None:
    # The settle loop may pass the state itself as an input: each element is read before written.
    state = 2 * torch.randn(4, 50)
    ref = ops.settle_epilogue_ref(state, state, state, None, 0.7, 0.2, "clamp01")
    ops.settle_epilogue_(state, state, state, None, 0.7, 0.2, "clamp01")
    torch.testing.assert_close(state, ref)


def _opcheck_samples(device: str) -> list[tuple]:
    samples = []
    for i, (c, dtype) in enumerate([(CASES["odd-2d"], torch.float32), (CASES["neither"], torch.float64),
                                    (CASES["strided"], torch.float32), (CASES["batch1"], torch.float16)]):
        state, _, bu, td, nd = _inputs(c, dtype, device)
        samples.append((state, bu, td, nd, c.alpha, c.gamma, i % len(ACTIVATION_CODES)))
    return samples


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device: str) -> None:
    for args in _opcheck_samples(device):
        torch.library.opcheck(torch.ops.eqkern.settle_epilogue_.default, args)


def test_compile_fullgraph() -> None:
    def step(s: torch.Tensor, u: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        ops.settle_epilogue_(s, u, d, None, 0.5, 1.0, "hard_sigmoid")
        return s * 2

    u, d = torch.randn(3, 10), torch.randn(3, 10)
    out = torch.compile(step, fullgraph=True, backend="aot_eager")(torch.zeros(3, 10), u, d)
    torch.testing.assert_close(out, 2 * ops.settle_epilogue_ref(u, u, d, None, 0.5, 1.0, "hard_sigmoid"))


# -- errors -------------------------------------------------------------------------------------

def _op():
    """The raw registered op (int activation code), bypassing the Python wrapper's checks."""
    assert _build.cpp_available(), _build.cpp_load_error()
    return torch.ops.eqkern.settle_epilogue_.default


def _raises(exc: type, match: str, fn, *args) -> None:
    with pytest.raises(exc, match=match) as info:
        fn(*args)
    print("raised:", info.value)


def test_error_shape_mismatch() -> None:
    s = torch.zeros(2, 3)
    _raises(RuntimeError, r"bottom_up has shape \[2, 4\] but state has shape \[2, 3\]",
            _op(), s, torch.zeros(2, 4), None, None, 1.0, 1.0, 0)
    _raises(RuntimeError, "nudge has shape", _op(), s, torch.zeros(2, 3), None, torch.zeros(3), 1.0, 1.0, 0)
    _raises(RuntimeError, "top_down has shape", _op(), s, torch.zeros(2, 3), torch.zeros(1, 3), None, 1.0, 1.0, 0)


def test_error_dtype_mismatch() -> None:
    s = torch.zeros(2, 3)
    _raises(RuntimeError, "top_down has dtype Double but state has dtype Float",
            _op(), s, torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.float64), None, 1.0, 1.0, 0)
    _raises(RuntimeError, "state must be float32, float64, float16 or bfloat16",
            _op(), torch.zeros(2, 3, dtype=torch.int32), torch.zeros(2, 3, dtype=torch.int32), None, None,
            1.0, 1.0, 0)


def test_error_device_mismatch_cpu_meta() -> None:
    # Without a GPU, meta tensors are the other device: the wrapper catches the mix before dispatch.
    s = torch.zeros(2, 3)
    _raises(RuntimeError, "bottom_up is on meta but state is on cpu", ops.settle_epilogue_,
            s, torch.zeros(2, 3, device="meta"), None, None, 1.0, 1.0, "relu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_error_device_mismatch_cuda() -> None:
    s = torch.zeros(2, 3, device="cuda")
    _raises(RuntimeError, "bottom_up is on cpu but state is on cuda", _op(),
            s, torch.zeros(2, 3), None, None, 1.0, 1.0, 0)


def test_error_unknown_activation() -> None:
    s = torch.zeros(2, 3)
    _raises(RuntimeError, "unknown activation code 7", _op(), s, torch.zeros(2, 3), None, None, 1.0, 1.0, 7)
    _raises(RuntimeError, "unknown activation code -1", _op(), s, torch.zeros(2, 3), None, None, 1.0, 1.0, -1)
    _raises(ValueError, "unknown activation 'sigmoid'", ops.settle_epilogue_,
            s, torch.zeros(2, 3), None, None, 1.0, 1.0, "sigmoid")


def test_error_overlapping_state() -> None:
    s = torch.zeros(1, 3).expand(4, 3)
    _raises(RuntimeError, "internally overlapping", _op(), s, torch.zeros(4, 3), None, None, 1.0, 1.0, 0)


def test_error_when_extension_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_build, "_LOAD_ERROR", "ImportError: pretend eqkern._C is missing")
    _raises(RuntimeError, r"eqkern._C is not built.*pretend eqkern._C is missing.*--no-build-isolation -e \.",
            ops.settle_epilogue_, torch.zeros(2), torch.zeros(2), None, None, 1.0, 1.0, "relu")
