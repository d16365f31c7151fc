"""The one TF32 policy of every backend: exact fp32 unless ``EQKERN_TF32=1``.

torch leaves cuDNN's TF32 on by default, so without a policy the ``reference``, ``torch`` and
``cpp`` backends would run their fp32 convolutions on CUDA (the Hebbian weight gradient included)
at TF32 while the Triton kernels compute exact fp32, and the backends would disagree by ~1e-3.
Here one switch decides for all of them:

* ``EQKERN_TF32=0`` (default): exact fp32 everywhere (what the tests assume);
* ``EQKERN_TF32=1``: TF32 tensor cores for cuDNN/cuBLAS fp32 work and the Triton fp32 dots.

``EQKERN_TRITON_FP32_DOT`` (``ieee`` | ``tf32`` | ``tf32x3``) still overrides the Triton dots
alone. Both are read once, at import (Triton bakes the dot precision into compiled kernels).
On CPU nothing changes: TF32 is a CUDA-only format.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch

from eqkern.errors import ArgumentError

__all__ = ["TF32", "TRITON_FP32_DOT", "tf32_policy", "describe"]


def _flag(name: str, default: str) -> bool:
    value = os.environ.get(name, default).strip().lower()
    if value not in ("0", "1", "true", "false"):
        raise ArgumentError(f"${name} must be 0 or 1, got {value!r}")
    return value in ("1", "true")


TF32: bool = _flag("EQKERN_TF32", "0")
TRITON_FP32_DOT: str = os.environ.get("EQKERN_TRITON_FP32_DOT", "tf32" if TF32 else "ieee")
if TRITON_FP32_DOT not in ("ieee", "tf32", "tf32x3"):
    raise ArgumentError(f"$EQKERN_TRITON_FP32_DOT must be ieee, tf32 or tf32x3, got "
                        f"{TRITON_FP32_DOT!r}")


@contextlib.contextmanager
def tf32_policy(device: torch.device | str | None = None) -> Iterator[None]:
    """Run the enclosed cuDNN/cuBLAS work with TF32 as :data:`TF32` says, restoring torch's flags
    afterwards (a user's own setting outside eqkern is left alone). A no-op off CUDA."""
    if device is not None and torch.device(device).type != "cuda":
        yield
        return
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = cudnn.allow_tf32, matmul.allow_tf32
    cudnn.allow_tf32 = matmul.allow_tf32 = TF32
    try:
        yield
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = saved


def describe() -> dict:
    """The policy in force, for benchmark records and ``eqkern info``."""
    return {"tf32": TF32, "triton_fp32_dot": TRITON_FP32_DOT,
            "fp32_math": "tf32 (10-bit mantissa products)" if TF32 else "exact fp32"}
