"""Backend ``cpp``: the analytic step of :mod:`.analytic` with its per-layer update fused in C++.

The convolutions go through ATen (oneDNN on CPU, cuDNN on GPU); the rest of a layer's update,
``state ← ρ(α·u + γ·d + n)``, is one pass of the registered op ``eqkern::settle_epilogue_``
(``csrc/cpu/settle_epilogue_cpu.cpp``, ``csrc/cuda/settle_epilogue_cuda.cu``) instead of four ATen
passes. The whole-loop C++ op and the fused Hebbian update come with issue 6; until then the
Hebbian update is the analytic one.
"""

from __future__ import annotations

import torch

from ..model import CRNN
from . import analytic
from .common import Phase


def _cpp_epilogue_(state, u, d, n, alpha, gamma, activation) -> None:
    from .. import ops  # imported late: loading eqkern._C is only needed when this backend runs

    ops.settle_epilogue_(state, u, d, n, alpha, gamma, activation)


def settle(
    model: CRNN,
    x: torch.Tensor,
    state: list[torch.Tensor],
    beta: float,
    steps: int,
    y: torch.Tensor | None,
) -> list[torch.Tensor]:
    """Run ``steps`` steps in place with the fused C++/CUDA epilogue."""
    return analytic.settle(model, x, state, beta, steps, y, epilogue=_cpp_epilogue_)


def hebbian_update(model: CRNN, x: torch.Tensor, y: torch.Tensor, a: Phase, b: Phase) -> None:
    """The contrastive Hebbian update (the analytic one for now, see the module docstring)."""
    analytic.hebbian_update(model, x, y, a, b)
