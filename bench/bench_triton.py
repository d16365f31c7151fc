"""GPU benchmarks: one settling step and one Hebbian update of VGG-5 and VGG-7 at batch 128,
``reference`` vs ``torch`` vs ``cpp`` vs ``triton`` on the same CUDA device.

Run on a GPU machine with compiled (not interpreted) kernels::

    TRITON_INTERPRET=0 python -m pytest bench/bench_triton.py --benchmark-json=bench/results/gpu.json

On CPU every entry is skipped with the reason (the interpreter is a test path, not a fast one).
Each entry also stores in ``extra_info``: ``triton.testing.do_bench`` quantiles (CUDA events, L2
flushed), the FLOPs of a step (forward + transposed convolutions/GEMMs of every connection above
the input; the input drive is computed once per phase and amortised over ``steps``), the TFLOP/s
reached and its fraction of the device's dense peak for the arithmetic used (fp32 on CUDA cores:
``input_precision="ieee"``; cuDNN may use TF32 tensor cores for the torch/cpp providers if
``torch.backends.cudnn.allow_tf32`` is on, which is torch's default for convolutions).
"""

from __future__ import annotations

import os

import pytest
import torch

from conftest import SIZES
from eqkern import CRNN, Conv, settle
from eqkern.backends import get_backend, unavailable_reason
from eqkern.backends.base import Phase, accumulate_grads

PROVIDERS = ["reference", "torch", "cpp", "triton"]
PHASE_STEPS = 5

# Dense peak TFLOP/s of the SXM parts (NVIDIA datasheets): fp32 on CUDA cores, and bf16/fp16
# tensor cores (what an fp16/bf16-storage run of the triton kernels can use).
PEAK_TFLOPS = {"H100": {"fp32": 67.0, "bf16": 989.4}, "H200": {"fp32": 67.0, "bf16": 989.4}}

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="triton benchmarks need a CUDA GPU (on CPU the kernels only run in "
                              "the interpreter, a test path)"),
]


# The GPU sizes of the shared table (bench/conftest.py).
GPU_SIZES = ["vgg5-b128", "vgg7-b128"]


def step_flops(model: CRNN, batch: int) -> int:
    """FLOPs of one step: forward and transposed conv (or GEMM) of every connection but the first."""
    flops = 0
    shapes = [model.input_shape, *model.state_shapes]
    for i in range(1, model.num_layers):
        conn, spec = model.connections[i], model.specs[i]
        if isinstance(spec, Conv):
            h, w = shapes[i][1:]
            ho, wo = h + 2 * spec.padding - spec.kernel_size + 1, w + 2 * spec.padding - spec.kernel_size + 1
            macs = conn.weight.numel() * ho * wo
        else:
            macs = conn.weight.numel()
        flops += 2 * 2 * macs * batch  # forward + feedback, 2 FLOPs per MAC
    return flops


def _require(provider: str) -> None:
    reason = unavailable_reason(provider, torch.device("cuda"))
    if reason is not None:
        pytest.skip(f"{provider}: {reason}")
    if provider == "triton" and os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("TRITON_INTERPRET=1 would time the interpreter: run with TRITON_INTERPRET=0")


def _peak(dtype: torch.dtype) -> float | None:
    name = torch.cuda.get_device_name()
    for key, peaks in PEAK_TFLOPS.items():
        if key in name:
            return peaks["fp32" if dtype == torch.float32 else "bf16"]
    return None


def _record(benchmark, fn, flops_per_call: int | None, steps: int = 1) -> None:
    import triton
    import triton.testing

    import eqkern

    q50, q20, q80 = triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8])
    info = dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                triton=triton.__version__, eqkern=eqkern.__version__, steps=steps,
                do_bench_ms=[q50, q20, q80])
    if flops_per_call:
        tflops = flops_per_call / (q50 * 1e-3) / 1e12
        peak = _peak(torch.float32)
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
    settle(model, x, state, 0.0, 3, backend="torch")

    def run():
        settle(model, x, state, 0.5, PHASE_STEPS, y, backend=provider)
        torch.cuda.synchronize()

    benchmark.pedantic(run, rounds=5, warmup_rounds=1)
    _record(benchmark, run, step_flops(model, batch) * PHASE_STEPS, steps=PHASE_STEPS)
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
    settle(model, x, state, 0.0, 3, backend="torch")
    plus = settle(model, x, [s.clone() for s in state], 0.5, 1, y, backend="torch")
    minus = settle(model, x, [s.clone() for s in state], -0.5, 1, y, backend="torch")
    hebbian = get_backend(provider, x.device).hebbian_gradients

    def update(*args):
        accumulate_grads(hebbian(*args))

    def run():
        model.zero_grad(set_to_none=True)
        with torch.no_grad():
            update(model, x, y, Phase(plus, 0.5), Phase(minus, -0.5))
        torch.cuda.synchronize()

    benchmark.pedantic(run, rounds=5, warmup_rounds=1)
    _record(benchmark, run, None)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
