"""GPU benchmarks: one settling step and one Hebbian update of VGG-5 and VGG-7 at batch 128,
``reference`` vs ``torch`` vs ``cpp`` vs ``triton`` on the same CUDA device.

Run on a GPU machine with compiled (not interpreted) kernels, the default there::

    TRITON_INTERPRET=0 python -m pytest bench/bench_triton.py --benchmark-json=bench/results/gpu.json

``EQKERN_BENCH_SIZES=a,b`` (bench/conftest.py's SIZES) replaces the two default sizes. On CPU every
entry is skipped with the reason (the interpreter is a test path, not a fast one).

All four providers run under the one TF32 policy (``eqkern.kernels.precision``: exact fp32 unless
``EQKERN_TF32=1``; ``tf32_policy`` sets cuDNN/cuBLAS for reference/torch/cpp, the Triton dots
follow ``TRITON_FP32_DOT``). Each entry stores in ``extra_info``: the policy
(``precision.describe()``), the arithmetic this provider actually used (``math``: ``fp32``,
``tf32``, ``tf32x3`` or ``bf16``), ``triton.testing.do_bench`` quantiles (CUDA events, L2
flushed), the FLOPs of a call (settle: forward + transposed convolutions/GEMMs of every
connection above the input, the input drive being computed once per phase and amortised over
``steps``; Hebbian update: the weight-gradient correlation of every connection for both nudged
phases), the TFLOP/s reached and its fraction of the device's dense peak for that arithmetic
(``peak_tflops``: fp32 CUDA cores, TF32 or bf16 tensor cores; ``tf32x3`` runs three TF32 dots per
product, so its fraction is against the TF32 peak and at most 1/3).
"""

from __future__ import annotations

import os

import pytest
import torch

from conftest import SELECTED, SIZES
from eqkern import CRNN, Conv, settle
from eqkern.backends import get_backend, unavailable_reason
from eqkern.backends.base import Phase, accumulate_grads
from eqkern.kernels import precision
from eqkern.model.specs import conv_output_size

PROVIDERS = ["reference", "torch", "cpp", "triton"]
PHASE_STEPS = 5

# Dense peak TFLOP/s (NVIDIA datasheets, whose tensor-core figures are "with sparsity": halved
# here): fp32 on CUDA cores, TF32 and bf16/fp16 tensor cores. Matched in order against the device
# name, so the PCIe part is tried before the SXM one ("NVIDIA H100 80GB HBM3", "NVIDIA H200").
_SXM = {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4}
PEAK_TFLOPS = {"H100 PCIe": {"fp32": 51.2, "tf32": 378.0, "bf16": 756.0}, "H100": _SXM,
               "H200": _SXM}

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="triton benchmarks need a CUDA GPU (on CPU the kernels only run in "
                              "the interpreter, a test path)"),
]


# The GPU sizes of the shared table (bench/conftest.py); EQKERN_BENCH_SIZES picks others (`make
# test`'s smoke size, `make gpu-check`'s pair).
GPU_SIZES = SELECTED if os.environ.get("EQKERN_BENCH_SIZES") else ["vgg5-b128", "vgg7-b128"]


def _connection_macs(model: CRNN, i: int, batch: int) -> int:
    """Multiply-adds of connection i's convolution (at its unpooled output size) or GEMM."""
    conn, spec = model.connections[i], model.specs[i]
    shapes = [model.input_shape, *model.state_shapes]
    if isinstance(spec, Conv):
        ho, wo = conv_output_size(*shapes[i][1:], spec.kernel_size, spec.padding)
        return conn.weight.numel() * ho * wo * batch
    return conn.weight.numel() * batch


def step_flops(model: CRNN, batch: int) -> int:
    """FLOPs of one step: forward and transposed conv (or GEMM) of every connection but the first."""
    return sum(2 * 2 * _connection_macs(model, i, batch) for i in range(1, model.num_layers))


def hebbian_flops(model: CRNN, batch: int) -> int:
    """FLOPs of the contrastive update: one weight-gradient correlation per connection (the
    input one included) and nudged phase, 2 FLOPs per MAC; the bias sums are negligible."""
    out = getattr(model, "out", None)  # the soft-max read-out's weights, when there is one
    macs = sum(_connection_macs(model, i, batch) for i in range(model.num_layers))
    return 2 * 2 * (macs + (out.weight.numel() * batch if out is not None else 0))


def _require(provider: str) -> None:
    reason = unavailable_reason(provider, torch.device("cuda"))
    if reason is not None:
        pytest.skip(f"{provider}: {reason}")
    if provider == "triton" and os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("TRITON_INTERPRET=1 would time the interpreter: run with TRITON_INTERPRET=0")


def math_used(provider: str, dtype: torch.dtype) -> str:
    """The arithmetic of the provider's products under the policy in force: 16-bit storage runs
    on bf16/fp16 tensor cores; fp32 follows ``TRITON_FP32_DOT`` for triton and ``TF32`` (through
    ``tf32_policy``) for the cuDNN/cuBLAS providers."""
    if dtype in (torch.bfloat16, torch.float16):
        return "bf16"
    if provider == "triton":
        return {"ieee": "fp32"}.get(precision.TRITON_FP32_DOT, precision.TRITON_FP32_DOT)
    return "tf32" if precision.TF32 else "fp32"


def _peak(math: str) -> float | None:
    name = torch.cuda.get_device_name()
    for key, peaks in PEAK_TFLOPS.items():
        if key in name:
            return peaks["tf32" if math == "tf32x3" else math]
    return None


def _record(benchmark, fn, flops_per_call: int | None, math: str, steps: int = 1) -> None:
    import triton
    import triton.testing

    import eqkern

    q50, q20, q80 = triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8])
    peak = _peak(math)
    info = dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                triton=triton.__version__, eqkern=eqkern.__version__, steps=steps,
                do_bench_ms=[q50, q20, q80], precision=precision.describe(), math=math,
                peak_tflops=peak)
    if flops_per_call:
        tflops = flops_per_call / (q50 * 1e-3) / 1e12
        info.update(flops=flops_per_call, tflops=tflops,
                    peak_fraction=(tflops / peak) if peak else None)
    benchmark.extra_info.update(info)


@pytest.mark.parametrize("size", GPU_SIZES)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_settle_step_cuda(benchmark, provider, size):
    """A nudged phase of PHASE_STEPS synchronous steps (report.py divides by ``steps``)."""
    _require(provider)
    builder, batch, width = SIZES[size]
    model, x, y = builder(batch, width)
    model, x, y = model.cuda(), x.cuda(), y.cuda()
    benchmark.group = f"settle-step-{size}-cuda"
    state = model.init_state(batch)
    with precision.tf32_policy(x.device):  # the same policy for all four providers
        settle(model, x, state, 0.0, 3, backend="torch")

        def run():
            settle(model, x, state, 0.5, PHASE_STEPS, y, backend=provider)
            torch.cuda.synchronize()

        benchmark.pedantic(run, rounds=5, warmup_rounds=1)
        _record(benchmark, run, step_flops(model, batch) * PHASE_STEPS, math_used(provider, x.dtype),
                steps=PHASE_STEPS)
    assert all(torch.isfinite(s).all() for s in state)


@pytest.mark.parametrize("size", GPU_SIZES)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_hebbian_update_cuda(benchmark, provider, size):
    """The symmetric contrastive update of every weight from two nudged states."""
    _require(provider)
    builder, batch, width = SIZES[size]
    model, x, y = builder(batch, width)
    model, x, y = model.cuda(), x.cuda(), y.cuda()
    benchmark.group = f"hebbian-update-{size}-cuda"
    state = model.init_state(batch)
    hebbian = get_backend(provider, x.device).hebbian_gradients

    def update(*args):
        accumulate_grads(hebbian(*args))

    def run():
        model.zero_grad(set_to_none=True)
        with torch.no_grad():
            update(model, x, y, Phase(plus, 0.5), Phase(minus, -0.5))
        torch.cuda.synchronize()

    with precision.tf32_policy(x.device):  # the same policy for all four providers
        settle(model, x, state, 0.0, 3, backend="torch")
        plus = settle(model, x, [s.clone() for s in state], 0.5, 1, y, backend="torch")
        minus = settle(model, x, [s.clone() for s in state], -0.5, 1, y, backend="torch")
        benchmark.pedantic(run, rounds=5, warmup_rounds=1)
        _record(benchmark, run, hebbian_flops(model, batch), math_used(provider, x.dtype))
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
