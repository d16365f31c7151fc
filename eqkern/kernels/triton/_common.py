"""What the three Triton ops share: dtype policy, block sizes and the activation epilogue.

Every kernel computes in fp32 (fp64 for fp64 storage): tiles are loaded, upcast to the
accumulator dtype ``ACC``, and rounded to the storage dtype only on the final store. The GEMM
operands of ``tl.dot`` are fed in ``DOT`` dtype: the storage dtype for fp16 and (on a GPU) bf16, so
that tensor cores are used with fp32 accumulation; ``ACC`` otherwise, with
``input_precision="ieee"`` so that fp32 dots are exact fp32 (no tf32) and the interpreter and the
GPU agree with the fp32 tests (``EQKERN_TRITON_FP32_DOT=tf32`` trades that for tensor cores).
The interpreter multiplies raw bit patterns in a bf16 ``tl.dot`` (triton#11584), so there bf16
tiles are upcast to fp32 before the dot (the interpreter has no 16-bit dot).

``TRITON_INTERPRET`` is read at ``@triton.jit`` decoration, i.e. when this package is imported:
import ``eqkern.kernels.triton`` only after it is set (``tests/conftest.py`` does).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from eqkern.errors import ArgumentError, ArgumentTypeError

# Same test as triton's decorator, at the same moment (import), so the two always agree.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

# Index arithmetic dtype. The interpreter checks every int32 add/mul for overflow (its options
# have sanitize_overflow=True and no way to turn it off), which doubles its run time; int64
# arithmetic is not checked. On a GPU int32 is the fast choice (launchers refuse ≥ 2**31 elements).
INDEX = tl.int64 if INTERPRET else tl.int32

# input_precision of the fp32 dots: "ieee" (default: exact fp32, what the tests and the
# interpreter assume) or, on a GPU, "tf32" / "tf32x3" for tensor cores at reduced precision.
DOT_PRECISION = os.environ.get("EQKERN_TRITON_FP32_DOT", "ieee")
if DOT_PRECISION not in ("ieee", "tf32", "tf32x3"):
    raise ArgumentError(f"EQKERN_TRITON_FP32_DOT must be ieee, tf32 or tf32x3, got {DOT_PRECISION!r}")

_TL_DTYPES = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16,
              torch.float32: tl.float32, torch.float64: tl.float64}
SUPPORTED_DTYPES = tuple(_TL_DTYPES)


def check_dtype(name: str, t: torch.Tensor) -> None:
    if t.dtype not in _TL_DTYPES:
        raise ArgumentTypeError(f"{name} has dtype {t.dtype}; the triton kernels take "
                        f"{[str(d) for d in SUPPORTED_DTYPES]}")


def acc_dtype(dtype: torch.dtype):
    """Accumulator / epilogue dtype: fp64 for fp64 storage, else fp32."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def dot_dtype(dtype: torch.dtype):
    """Operand dtype of ``tl.dot`` (see the module docstring)."""
    if dtype == torch.float16 or (dtype == torch.bfloat16 and not INTERPRET):
        return _TL_DTYPES[dtype]
    return acc_dtype(dtype)


def dot_precision(dtype: torch.dtype) -> str:
    """``input_precision`` of ``tl.dot``: the ``EQKERN_TRITON_FP32_DOT`` choice for fp32 storage."""
    return DOT_PRECISION if dtype == torch.float32 else "ieee"


def block(n: int, lo: int = 16, hi: int = 64) -> int:
    """A power of two ≥ ``n`` clamped to ``[lo, hi]``; ``lo = 16`` is ``tl.dot``'s minimum size."""
    return max(lo, min(hi, triton.next_power_of_2(max(int(n), 1))))


# Warps per program on a GPU. With 4 warps the fp32 (FMA) dots of 64×64 tiles spill on sm_90;
# with 8 none of the kernels does (ptxas -v, see eqkern.kernels.triton.compile_check). Ignored by the
# interpreter.
NUM_WARPS = 8


def gemm_blocks(m: int, n: int, k: int) -> tuple[int, int, int]:
    """``(BLOCK_M, BLOCK_N, BLOCK_K)`` of an implicit GEMM of ``m`` rows, ``n`` columns, ``k`` channels.

    On a GPU: 64×64 output tiles, K in chunks of 32 (``NUM_WARPS`` warps). The interpreter runs
    programs one after another at about 1 ms of fixed cost each, so there the tiles are as large as the
    problem (up to 1024 rows): a test-sized launch is one or a few programs.
    """
    if INTERPRET:
        return block(m, hi=1024), block(n, hi=128), block(k, hi=64)
    return block(m, hi=64), block(n, hi=64), block(k, hi=32)


def split_scalar(x: float) -> tuple[float, float]:
    """``x = hi + lo`` with ``hi`` and ``lo`` exact in fp32.

    A compiled Triton kernel receives Python floats as fp32, which would round α, γ and the
    Hebbian scale of an fp64 run to 7 digits; the kernel adds the two halves in its ``ACC`` dtype
    (fp64: ``x`` to about 1e-15; fp32: just ``hi``). The interpreter passes them unchanged.
    """
    hi = torch.tensor(float(x), dtype=torch.float32).item()
    lo = torch.tensor(float(x) - hi, dtype=torch.float32).item()
    return hi, lo


def check_int32(*tensors: torch.Tensor) -> None:
    """Kernels index with int32 offsets: refuse tensors of 2**31 elements or more."""
    for t in tensors:
        if t is not None and t.numel() >= 2**31:
            raise ArgumentError(f"tensor of {t.numel()} elements is too large for int32 indexing")


@triton.jit
def activate(v, ACT: tl.constexpr):
    """ρ(v) by code (``eqkern.activations.ACTIVATION_CODES``); core ``tl`` only (no libdevice)."""
    if ACT == 0:  # hard_sigmoid: clamp(v/2, 0, 1)
        v = tl.minimum(tl.maximum(v * 0.5, 0.0), 1.0)
    elif ACT == 1:  # clamp01
        v = tl.minimum(tl.maximum(v, 0.0), 1.0)
    elif ACT == 2:  # hard_sigmoid_courbariaux: clamp((v+1)/2, 0, 1)
        v = tl.minimum(tl.maximum((v + 1.0) * 0.5, 0.0), 1.0)
    elif ACT == 3:  # relu
        v = tl.maximum(v, 0.0)
    else:  # tanh through exp of a non-positive argument: no overflow, odd by construction
        t = tl.exp(-2.0 * tl.abs(v))
        r = (1.0 - t) / (1.0 + t)
        v = tl.where(v < 0.0, -r, r)
    return v
